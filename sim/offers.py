"""Offers: the rows of GPU offers and volume offers that the hosts' free capacity makes, and search.

A GPU offer's id is ``machine_id*100 + num_gpus``; a machine's volume offer is
``machine_id*100 + VOLUME_OFFER_SUFFIX`` (see ``inventory``).
"""

from . import query as q
from .errors import invalid_args, invalid_json
from .inventory import OFFER_GPU_COUNTS, OFFER_LIFETIME_SECONDS, VOLUME_OFFER_SUFFIX, Host

# the default allocated_storage (GB) used to price offers when the query gives none
DEFAULT_ALLOCATED_STORAGE = 5.0
HOURS_PER_MONTH = 720.0  # as Vast computes storage_total_cost (docs: storage_cost x GB / 720)


def monthly_to_hourly(gb, storage_cost):
    """$/h of ``gb`` of storage at ``storage_cost`` $/GB/month."""
    return gb * storage_cost / HOURS_PER_MONTH


class Offers:
    def __init__(self, hosts: dict[int, Host], clock, lock):
        self.hosts, self.clock, self.lock = hosts, clock, lock

    def end_date(self):
        """When every offer's listing ends; an instance rented from it ends then too."""
        return self.clock.epoch + OFFER_LIFETIME_SECONDS

    def gpu_offer(self, offer_id) -> tuple[Host, int] | None:
        """(host, num_gpus) of a GPU offer that can be rented now, else None."""
        machine_id, n = divmod(offer_id, 100)
        host = self.hosts.get(machine_id)
        if host is None or n not in OFFER_GPU_COUNTS or n > host.free_gpus:
            return None
        return host, n

    def volume_offer(self, offer_id) -> Host | None:
        """The host of a volume offer that is listed now, else None."""
        host = self.hosts.get(offer_id // 100)
        if host is None or offer_id % 100 != VOLUME_OFFER_SUFFIX or host.failed:
            return None
        return host

    def _common(self, host: Host, now):
        end_date = self.end_date()
        return {
            "machine_id": host.machine_id, "host_id": host.host_id,
            "reliability": host.reliability, "reliability2": host.reliability,
            "verification": host.verification, "vericode": 1 if host.verification == "verified" else 0,
            "geolocation": host.geolocation, "hosting_type": host.hosting_type,
            "inet_up": host.inet_up, "inet_down": host.inet_down,
            "cuda_max_good": host.cuda_max_good, "driver_version": host.driver_version,
            "public_ipaddr": host.public_ipaddr, "static_ip": host.hosting_type == 1,
            "storage_cost": host.storage_cost,
            "start_date": self.clock.epoch, "end_date": end_date, "duration": end_date - now,
        }

    def _gpu_row(self, host: Host, n, storage, now):
        dph_base = round(host.gpu_price * n, 4)
        dph_total = round(dph_base + monthly_to_hourly(storage, host.storage_cost), 4)
        dlperf = round(host.dlperf * n / host.total_gpus, 2)
        offer_id = host.machine_id * 100 + n
        return {
            "id": offer_id, "ask_contract_id": offer_id, "bundle_id": offer_id,
            **self._common(host, now),
            "gpu_name": host.gpu_name, "num_gpus": n, "gpu_frac": round(n / host.total_gpus, 4),
            "gpu_ram": host.gpu_ram, "gpu_total_ram": host.gpu_ram * n,
            "cpu_ram": host.cpu_ram * n // host.total_gpus,
            "cpu_cores": host.cpu_cores, "cpu_cores_effective": host.cpu_cores * n / host.total_gpus,
            "disk_space": host.disk_space, "dph_base": dph_base, "dph_total": dph_total,
            "min_bid": round(dph_base * 0.6, 4), "is_bid": False,
            "rentable": True, "rented": False,
            "score": round(dlperf / dph_total * host.reliability, 3),
            "dlperf": dlperf, "dlperf_per_dphtotal": round(dlperf / dph_total, 3),
            "avail_vol_ask_id": host.volume_offer_id, "avail_vol_size": host.volume_free,
            "avail_vol_dph": round(monthly_to_hourly(1, host.storage_cost), 6),
        }

    def _volume_row(self, host: Host, storage, now):
        return {
            "id": host.volume_offer_id, "ask_contract_id": host.volume_offer_id,
            **self._common(host, now),
            "disk_space": host.volume_free, "disk_name": f"nvme-{host.machine_id}", "disk_bw": 2000.0,
            "storage_total_cost": round(monthly_to_hourly(storage, host.storage_cost), 6),
            "rentable": True, "rented": False,
            "score": round(host.reliability * 100 - host.storage_cost * 10, 3),
        }

    def search(self, query, volumes=False):
        """Rows of GPU offers (or volume offers) matching a bundles query."""
        if not isinstance(query, dict):
            raise invalid_json()
        filters = dict(query)
        order = filters.pop("order", None)
        limit = filters.pop("limit", None)
        filters.pop("type", None)
        storage = filters.pop("allocated_storage", None)
        filters.setdefault("rented", {"eq": False})
        try:
            storage = DEFAULT_ALLOCATED_STORAGE if storage is None else float(storage)
            limit = q.parse_limit(limit)
        except (TypeError, ValueError) as e:
            raise invalid_args(str(e)) from None
        with self.lock:
            now = self.clock.now()
            rows = []
            for host in self.hosts.values():
                if host.failed:
                    continue
                if volumes:
                    if host.volume_free > 0:
                        rows.append(self._volume_row(host, storage, now))
                    continue
                rows.extend(self._gpu_row(host, n, storage, now) for n in OFFER_GPU_COUNTS if n <= host.free_gpus)
        try:
            matched = [r for r in rows if _offer_matches(r, filters, storage)]
            order = q.parse_order(order, rows[0].keys() if rows else ())
        except q.QueryError as e:
            raise invalid_args(str(e)) from None
        if order:
            fields = [f for f, _ in order]
            return q.sort_rows(matched, lambda r: tuple(r[f] for f in fields), [d for _, d in order], limit)
        return matched if limit is None else matched[:limit]


def _offer_matches(row, filters, storage):
    view = dict(row, verified=row["verification"] == "verified", external=False,
                datacenter=row["hosting_type"] == 1)
    return row["disk_space"] >= storage and q.row_matches(view, filters)
