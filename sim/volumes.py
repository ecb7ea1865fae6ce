"""Local volumes: each one lives on the machine of its volume offer and links only to instances there."""

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from . import accounts
from .errors import ApiError, invalid_args, invalid_json, is_int, is_number, no_such_volume
from .inventory import Host
from .offers import monthly_to_hourly

DEFAULT_VOLUME_SIZE = 15
FIRST_VOLUME_ID = 30_000_001
VOLUME_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def check_volume_name(name):
    """Vast's rule: letters, digits and underscores, 64 at most (no name at all is fine)."""
    if name is not None and not (isinstance(name, str) and VOLUME_NAME.fullmatch(name)):
        raise invalid_args(f"Invalid volume name {name!r}: use 1-64 letters, digits or underscores.")


@dataclass
class Copy:
    """A copy into a volume (see ``copies``)."""
    src_id: int
    data_version: int  # the source's version when the copy started
    started_at: float
    done_at: float
    state: str = "copying"  # then "done", "lost" or "cancelled"


@dataclass
class Volume:
    id: int
    name: str | None
    machine_id: int
    size: float
    start_date: float
    instances: set = field(default_factory=set)
    data_version: int = 0  # the contents, as a number: each write adds one
    copy: Copy | None = None  # the last copy into this volume
    account: str | None = None  # the account that made it (sim/accounts.py)


class Volumes:
    def __init__(self, hosts: dict[int, Host], offers, clock, lock):
        self.hosts, self.offers, self.clock, self.lock = hosts, offers, clock, lock
        self.by_id: dict[int, Volume] = {}
        self.next_id = FIRST_VOLUME_ID
        self.created_by_name = Counter()

    def add(self, host: Host, size, name, now):
        vid = self.next_id
        self.next_id += 1
        self.by_id[vid] = Volume(id=vid, name=name, machine_id=host.machine_id, size=size, start_date=now,
                                 account=accounts.current.get())
        host.volume_used += size
        self.created_by_name[name or ""] += 1
        return vid

    def create(self, body):
        """``PUT /api/v0/volumes/``: a volume on a volume offer's machine."""
        if not isinstance(body, dict):
            raise invalid_json()
        offer_id, size, name = body.get("id"), body.get("size", DEFAULT_VOLUME_SIZE), body.get("name")
        if not is_int(offer_id):
            raise invalid_args("Please provide a valid volume offer id.")
        if not is_number(size) or size <= 0:
            raise invalid_args("size must be a positive number of GB.")
        check_volume_name(name)
        with self.lock:
            host = self.offers.volume_offer(offer_id)
            if host is None:
                raise ApiError(404, "no_such_ask", f"Volume offer {offer_id} is not available.")
            if size > host.volume_free:
                raise invalid_args(f"Volume size {size} exceeds the {host.volume_free} GB available.")
            vid = self.add(host, size, name, self.clock.now())
        return {"success": True, "volume_name": f"V.{vid}"}

    def resolve_link(self, info, host: Host):
        """(existing volume id, None) or (None, new volume spec) for a create's volume_info, validated."""
        if info is None:
            return None, None
        vid = info["volume_id"]
        if info["create_new"]:
            vhost = self.offers.volume_offer(vid)
            if vhost is None:
                raise invalid_args(f"Volume offer {vid} is not available.")
            if vhost.machine_id != host.machine_id:
                raise invalid_args(f"Volume offer {vid} is on machine {vhost.machine_id}, but the instance "
                                   f"is on machine {host.machine_id}: local volumes must be on the same machine.")
            size = info["size"]
            if size > host.volume_free:
                raise invalid_args(f"Volume size {size} exceeds the {host.volume_free} GB available.")
            return None, {"size": size, "name": info["name"]}
        volume = self.by_id.get(vid)
        if volume is None or not accounts.visible(volume.account):
            raise invalid_args(f"Volume {vid} does not exist.")
        if volume.machine_id != host.machine_id:
            raise invalid_args(f"Volume {vid} is on machine {volume.machine_id}, but the instance is on "
                               f"machine {host.machine_id}: local volumes can only be linked on their machine.")
        return vid, None

    def rows(self):
        """``GET /api/v0/volumes``: the account's volumes as Vast shows them."""
        with self.lock:
            rows = []
            for v in self.by_id.values():
                if not accounts.visible(v.account):
                    continue
                host = self.hosts[v.machine_id]
                rows.append({
                    "id": v.id, "label": v.name, "status": self._status(v, host),
                    "type": "local_volume", "disk_space": v.size, "machine_id": v.machine_id,
                    "host_id": host.host_id, "instances": sorted(v.instances), "start_date": v.start_date,
                    "disk_name": f"nvme-{host.machine_id}", "driver_version": host.driver_version,
                    "cuda_max_good": host.cuda_max_good, "inet_up": host.inet_up, "inet_down": host.inet_down,
                    "reliability2": host.reliability, "verification": host.verification,
                    "geolocation": host.geolocation, "public_ipaddr": host.public_ipaddr,
                    "os_version": "22.04", "cluster_id": None,
                    "storage_cost": host.storage_cost,
                    "storage_total_cost": round(monthly_to_hourly(v.size, host.storage_cost), 6),
                })
        return {"volumes": rows}

    @staticmethod
    def _status(volume: Volume, host: Host):
        if host.failed:
            return "offline"
        copying = volume.copy is not None and volume.copy.state in ("copying", "lost")
        return "copying" if copying else "online"

    def write(self, vid):
        """``POST /_sim/volumes/<id>/write``: something wrote to the volume; its data version goes up."""
        with self.lock:
            volume = self.by_id.get(vid)
            if volume is None:
                raise no_such_volume()
            if self.hosts[volume.machine_id].failed:
                raise ApiError(409, "machine_offline", f"Machine {volume.machine_id} of volume {vid} is offline.")
            volume.data_version += 1
            return {"success": True, "data_version": volume.data_version}

    def delete(self, vid):
        if not is_int(vid):
            raise invalid_args("Please provide a valid volume ID.")
        with self.lock:
            volume = self.by_id.get(vid)
            if volume is None or not accounts.visible(volume.account):
                raise no_such_volume()
            if volume.instances:
                raise invalid_args(f"Volume {vid} is in use by instances {sorted(volume.instances)}; "
                                   "destroy them before deleting the volume.")
            del self.by_id[vid]
            self.hosts[volume.machine_id].volume_used -= volume.size
        return {"success": True}

    def ledger_rows(self):
        return [{"id": v.id, "name": v.name, "machine_id": v.machine_id, "size": v.size,
                 "instances": sorted(v.instances), "start_date": v.start_date, "data_version": v.data_version,
                 "copy": None if v.copy is None else asdict(v.copy)} for v in self.by_id.values()]
