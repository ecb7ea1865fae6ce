"""The simulated world: hosts, instances, volumes, the clock, stats and faults.

One ``World`` per app, every public method takes ``self.lock``. Instance status is computed
lazily from timestamps on each read (no background threads), so ``time_scale`` 0.01 makes every
delay a hundred times shorter. GPU allocation is event-driven: a GPU freed by a stop, a destroy
or a host restore goes at once to the instances waiting on that host.
"""

import base64
import binascii
import hashlib
import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from . import query as q
from .inventory import GPU_NAMES, OFFER_GPU_COUNTS, OFFER_LIFETIME_SECONDS, VOLUME_OFFER_SUFFIX, Host, build_hosts

# Vast-like delays in seconds at time_scale 1.0 (each one is multiplied by time_scale).
# create: actual_status "created" for CREATED_SECONDS, then "loading" until LOAD_SECONDS
# (pulling the image), then "running".
CREATED_SECONDS = 2.0
LOAD_SECONDS = 25.0
# start of a stopped instance, once its GPUs are free: "loading" for START_SECONDS, then
# "running". While its GPUs are taken it stays scheduling (actual "stopped", status_msg
# "scheduling ...") for as long as it takes.
START_SECONDS = 10.0
# stop: the GPUs are released at once; actual_status keeps its old value for STOP_SECONDS,
# then becomes "stopped".
STOP_SECONDS = 2.0

# the default allocated_storage (GB) used to price offers when the query gives none
DEFAULT_ALLOCATED_STORAGE = 5.0
DEFAULT_VOLUME_SIZE = 15
HOURS_PER_MONTH = 730.0

# instance columns that select_filters may use; computed ones (dph_total, num_gpus...) are 400
FILTERABLE_INSTANCE_COLUMNS = {
    "id", "machine_id", "host_id", "bundle_id", "actual_status", "intended_status", "cur_state",
    "next_state", "label", "gpu_name", "verification", "image_uuid", "start_date", "geolocation",
}
INSTANCE_PAGE_MAX = 25
INSTANCE_PAGE_DEFAULT_WHEN_NONPOSITIVE = 5

FIRST_INSTANCE_ID = 10_000_001
FIRST_VOLUME_ID = 30_000_001


class ApiError(Exception):
    """An error response: HTTP status plus the JSON body Vast would send."""

    def __init__(self, status, error, msg, **extra):
        super().__init__(msg)
        self.status = status
        self.body = {"success": False, "error": error, "msg": msg, **extra}


def invalid_args(msg):
    return ApiError(400, "invalid_args", msg)


def invalid_json():
    error = ApiError(400, "invalid_request", "Invalid json body")
    del error.body["success"]  # Vast's body for this one has no "success"
    return error


def no_such_instance():
    return ApiError(404, "no_such_instance", "Instance not found")


@dataclass
class Volume:
    id: int
    name: str | None
    machine_id: int
    size: float
    start_date: float
    instances: set = field(default_factory=set)


@dataclass
class Instance:
    id: int
    machine_id: int
    num_gpus: int
    bundle_id: int
    dph_base: float
    image: str | None
    label: str | None
    disk: float
    onstart: str | None
    env: dict
    runtype: str | None
    start_date: float
    api_key: str
    volume_id: int | None = None
    mount_path: str | None = None
    intended: str = "running"
    allocated: bool = False  # holds num_gpus GPUs of its host
    # phase is what the last event started: "create", "create_stopped", "start", "wait"
    # (scheduling: waiting for GPUs) or "stop"; phase_at is when
    phase: str = "create"
    phase_at: float = 0.0
    status_before_stop: str | None = None
    failed: bool = False


class World:
    def __init__(self, seed=0, time_scale=1.0):
        self.seed = seed
        self.time_scale = float(time_scale)
        self.clock = time.time
        self.lock = threading.Lock()
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------------

    def reset(self):
        """Back to the seeded inventory with no instances, volumes, stats or faults."""
        with self.lock:
            self.epoch = self.clock()
            self.hosts: dict[int, Host] = {h.machine_id: h for h in build_hosts(self.seed)}
            self.instances: dict[int, Instance] = {}
            self.volumes: dict[int, Volume] = {}
            # FIFO of instance ids scheduling on each machine
            self.waiting: dict[int, list[int]] = defaultdict(list)
            self.next_instance_id = FIRST_INSTANCE_ID
            self.next_volume_id = FIRST_VOLUME_ID
            self.request_counts = Counter()
            self.instance_actions: dict[int, Counter] = defaultdict(Counter)
            self.created_by_label = Counter()
            self.volumes_created_by_name = Counter()
            self.rate_limited = 0
            self.errors_injected = 0
            self.faults = {"error_rate": 0.0, "rate_limit_rate": 0.0, "latency_ms": 0.0}
            self.fault_rng = random.Random(self.seed)
            self.route_intervals: dict[str, float] = {}
            self.route_last_call: dict[str, float] = {}

    def delay(self, seconds):
        return seconds * self.time_scale

    def config(self):
        return {
            "time_scale": self.time_scale, "seed": self.seed,
            "created_seconds": self.delay(CREATED_SECONDS), "load_seconds": self.delay(LOAD_SECONDS),
            "start_seconds": self.delay(START_SECONDS), "stop_seconds": self.delay(STOP_SECONDS),
        }

    # ---- faults, rate limits, stats --------------------------------------------------------

    def set_faults(self, body):
        faults = {"error_rate": 0.0, "rate_limit_rate": 0.0, "latency_ms": 0.0}
        for key in faults:
            value = body.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise invalid_args(f"{key} must be a non-negative number")
            faults[key] = float(value)
        with self.lock:
            self.faults = faults
        return faults

    def set_route_intervals(self, body):
        intervals = {}
        for route, value in body.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise invalid_args(f"interval for {route!r} must be a non-negative number")
            intervals[_route_key(route)] = float(value)
        with self.lock:
            self.route_intervals = intervals
            self.route_last_call = {}
        return body

    def admit(self, route):
        """Count a request to ``route`` ("METHOD /template/") and decide its fate first.

        Returns None to handle it, or ("rate_limited", threshold) / ("error", None) for an
        injected response, plus the latency to add. Decided before handling, so an injected
        error never has a side effect.
        """
        with self.lock:
            self.request_counts[route] += 1
            latency = self.faults["latency_ms"] / 1000.0
            key = _route_key(route)
            interval = self.route_intervals.get(key)
            if interval is not None:
                now = self.clock()
                last = self.route_last_call.get(key)
                if last is not None and now - last < interval:
                    self.rate_limited += 1
                    return ("threshold", interval), latency
                self.route_last_call[key] = now
            roll = self.fault_rng.random()
            if roll < self.faults["rate_limit_rate"]:
                self.rate_limited += 1
                return ("rate_limited", None), latency
            if roll < self.faults["rate_limit_rate"] + self.faults["error_rate"]:
                self.errors_injected += 1
                return ("error", None), latency
            return None, latency

    def stats(self):
        with self.lock:
            return {
                "requests": dict(self.request_counts),
                "instance_actions": {str(k): dict(v) for k, v in self.instance_actions.items()},
                "created_by_label": dict(self.created_by_label),
                "volumes_created_by_name": dict(self.volumes_created_by_name),
                "rate_limited": self.rate_limited,
                "errors_injected": self.errors_injected,
            }

    # ---- offers ----------------------------------------------------------------------------

    def _offer_common(self, host: Host, now):
        end_date = self.epoch + OFFER_LIFETIME_SECONDS
        return {
            "machine_id": host.machine_id, "host_id": host.host_id,
            "reliability": host.reliability, "reliability2": host.reliability,
            "verification": host.verification, "vericode": 1 if host.verification == "verified" else 0,
            "geolocation": host.geolocation, "hosting_type": host.hosting_type,
            "inet_up": host.inet_up, "inet_down": host.inet_down,
            "cuda_max_good": host.cuda_max_good, "driver_version": host.driver_version,
            "public_ipaddr": host.public_ipaddr, "static_ip": host.hosting_type == 1,
            "storage_cost": host.storage_cost,
            "start_date": self.epoch, "end_date": end_date, "duration": end_date - now,
        }

    def _gpu_offer(self, host: Host, n, storage, now):
        dph_base = round(host.gpu_price * n, 4)
        storage_dph = storage * host.storage_cost / HOURS_PER_MONTH
        dph_total = round(dph_base + storage_dph, 4)
        dlperf = round(host.dlperf * n / host.total_gpus, 2)
        offer_id = host.machine_id * 100 + n
        return {
            "id": offer_id, "ask_contract_id": offer_id, "bundle_id": offer_id,
            **self._offer_common(host, now),
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
            "avail_vol_dph": round(host.storage_cost / HOURS_PER_MONTH, 6),
        }

    def _volume_offer(self, host: Host, storage, now):
        return {
            "id": host.volume_offer_id, "ask_contract_id": host.volume_offer_id,
            **self._offer_common(host, now),
            "disk_space": host.volume_free, "disk_name": f"nvme-{host.machine_id}", "disk_bw": 2000.0,
            "storage_total_cost": round(storage * host.storage_cost / HOURS_PER_MONTH, 6),
            "rentable": True, "rented": False,
            "score": round(host.reliability * 100 - host.storage_cost * 10, 3),
        }

    def search_offers(self, query, volumes=False):
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
            now = self.clock()
            rows = []
            for host in self.hosts.values():
                if host.failed:
                    continue
                if volumes:
                    if host.volume_free > 0:
                        rows.append(self._volume_offer(host, storage, now))
                    continue
                for n in OFFER_GPU_COUNTS:
                    if n <= host.free_gpus:
                        rows.append(self._gpu_offer(host, n, storage, now))
        try:
            matched = [r for r in rows if _offer_matches(r, filters, storage)]
            known = rows[0].keys() if rows else ()
            order = q.parse_order(order, known)
        except q.QueryError as e:
            raise invalid_args(str(e)) from None
        if order:
            fields = [f for f, _ in order]
            return q.sort_rows(matched, lambda r: tuple(r[f] for f in fields), [d for _, d in order], limit)
        return matched if limit is None else matched[:limit]

    # ---- instances: status -----------------------------------------------------------------

    def _offline(self, inst: Instance):
        return inst.failed or self.hosts[inst.machine_id].failed

    def actual_status(self, inst: Instance, now):
        if self._offline(inst):
            return "offline"
        elapsed = now - inst.phase_at
        if inst.phase == "create":
            if elapsed < self.delay(CREATED_SECONDS):
                return "created"
            return "loading" if elapsed < self.delay(LOAD_SECONDS) else "running"
        if inst.phase == "create_stopped":
            return "created" if elapsed < self.delay(CREATED_SECONDS) else "stopped"
        if inst.phase == "start":
            return "loading" if elapsed < self.delay(START_SECONDS) else "running"
        if inst.phase == "stop" and elapsed < self.delay(STOP_SECONDS):
            return inst.status_before_stop
        return "stopped"

    def _status_msg(self, inst: Instance, actual):
        if actual == "offline":
            return "Instance is offline: its host machine is unreachable"
        if inst.phase == "wait":
            return (f"scheduling: waiting for {inst.num_gpus} GPU(s) on machine "
                    f"{inst.machine_id} to become available")
        return {
            "created": "Instance created",
            "loading": f"Loading image {inst.image}",
            "running": f"success, running {inst.image}/{inst.runtype or 'ssh'}",
        }.get(actual, "Instance stopped")

    def _column(self, inst: Instance, name, now):
        """The value of a filterable/sortable instance column."""
        if name == "actual_status":
            return self.actual_status(inst, now)
        if name == "intended_status" or name == "next_state":
            return inst.intended
        if name == "cur_state":
            return "running" if inst.allocated else "stopped"
        if name == "label":
            return inst.label
        if name == "image_uuid":
            return inst.image
        if name in ("id", "machine_id", "num_gpus", "bundle_id", "start_date"):
            return getattr(inst, name)
        host = self.hosts[inst.machine_id]
        return getattr(host, name, None)

    def _row(self, inst: Instance, now):
        host = self.hosts[inst.machine_id]
        actual = self.actual_status(inst, now)
        running = actual == "running"
        ssh_port = 10_000 + inst.id % 50_000
        storage_dph = inst.disk * host.storage_cost / HOURS_PER_MONTH
        volume = self.volumes.get(inst.volume_id)
        return {
            "id": inst.id, "machine_id": inst.machine_id, "host_id": host.host_id,
            "bundle_id": inst.bundle_id, "actual_status": actual, "intended_status": inst.intended,
            "cur_state": "running" if inst.allocated else "stopped", "next_state": inst.intended,
            "status_msg": self._status_msg(inst, actual), "label": inst.label,
            "image_uuid": inst.image, "image_runtype": inst.runtype, "image_args": [],
            "onstart": inst.onstart, "extra_env": [[k, v] for k, v in inst.env.items()],
            "template_id": None, "template_hash_id": None, "template_name": None,
            "ssh_host": f"ssh{inst.id % 9 + 1}.vast.ai", "ssh_idx": str(inst.id % 9 + 1),
            "ssh_port": ssh_port if running else None,
            "public_ipaddr": host.public_ipaddr,
            "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(ssh_port + 1)}]} if running else {},
            "direct_port_start": ssh_port if running else None,
            "direct_port_end": ssh_port + 10 if running else None,
            "gpu_name": host.gpu_name, "num_gpus": inst.num_gpus, "gpu_ram": host.gpu_ram,
            "gpu_totalram": host.gpu_ram * inst.num_gpus, "gpu_util": 0.0 if running else None,
            "gpu_frac": round(inst.num_gpus / host.total_gpus, 4),
            "cpu_ram": host.cpu_ram * inst.num_gpus // host.total_gpus,
            "cpu_cores_effective": host.cpu_cores * inst.num_gpus / host.total_gpus,
            "disk_space": inst.disk, "disk_usage": 0.0, "disk_util": 0.0,
            "dph_base": inst.dph_base, "dph_total": round(inst.dph_base + storage_dph, 4),
            "storage_cost": host.storage_cost, "is_bid": False, "min_bid": round(inst.dph_base * 0.6, 4),
            "start_date": inst.start_date, "end_date": self.epoch + OFFER_LIFETIME_SECONDS,
            "uptime_mins": round((now - inst.phase_at) / 60, 2) if running else None,
            "reliability2": host.reliability, "verification": host.verification,
            "geolocation": host.geolocation, "inet_up": host.inet_up, "inet_down": host.inet_down,
            "cuda_max_good": host.cuda_max_good, "driver_version": host.driver_version,
            "hosting_type": host.hosting_type,
            "volume_info": [] if volume is None else [{
                "id": volume.id, "name": volume.name, "mount_path": inst.mount_path,
                "total_space": volume.size, "avail_space": volume.size,
            }],
            "time_remaining": "",
        }

    # ---- instances: GPU allocation ---------------------------------------------------------

    def _request_gpus(self, inst: Instance, now):
        """Allocate the instance's GPUs, or queue it as scheduling until they free up."""
        host = self.hosts[inst.machine_id]
        if not self.waiting[host.machine_id] and host.free_gpus >= inst.num_gpus:
            host.used_gpus += inst.num_gpus
            inst.allocated = True
            inst.phase, inst.phase_at = "start", now
        else:
            self.waiting[host.machine_id].append(inst.id)
            inst.phase, inst.phase_at = "wait", now

    def _release_gpus(self, inst: Instance, now):
        if inst.allocated:
            self.hosts[inst.machine_id].used_gpus -= inst.num_gpus
            inst.allocated = False
        elif inst.phase == "wait":
            self.waiting[inst.machine_id].remove(inst.id)
        self._schedule(self.hosts[inst.machine_id], now)

    def _schedule(self, host: Host, now):
        """Give freed GPUs to the instances scheduling on the host, first come first served."""
        queue = self.waiting[host.machine_id]
        for inst_id in list(queue):
            inst = self.instances[inst_id]
            if host.free_gpus < inst.num_gpus:
                continue
            queue.remove(inst_id)
            host.used_gpus += inst.num_gpus
            inst.allocated = True
            inst.phase, inst.phase_at = "start", now

    # ---- instances: API --------------------------------------------------------------------

    def create_instance(self, offer_id, body):
        spec = _validate_create(body)
        with self.lock:
            now = self.clock()
            machine_id, n = divmod(offer_id, 100)
            host = self.hosts.get(machine_id)
            if host is None or n not in OFFER_GPU_COUNTS or n > host.free_gpus:
                raise ApiError(404, "invalid_args",
                               f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available.",
                               ask_id=offer_id)
            volume_id, new_volume = self._resolve_volume(spec["volume_info"], host)
            inst_id = self.next_instance_id
            self.next_instance_id += 1
            if new_volume is not None:
                volume_id = self._add_volume(host, new_volume["size"], new_volume["name"], now)
            inst = Instance(
                id=inst_id, machine_id=machine_id, num_gpus=n, bundle_id=offer_id,
                dph_base=round(host.gpu_price * n, 4), image=spec["image"], label=spec["label"],
                disk=spec["disk"], onstart=spec["onstart"], env=spec["env"], runtype=spec["runtype"],
                start_date=now, api_key=hashlib.sha256(f"{self.seed}:{inst_id}".encode()).hexdigest(),
                volume_id=volume_id, mount_path=spec["volume_info"] and spec["volume_info"].get("mount_path"),
                intended=spec["target_state"], phase_at=now,
            )
            if volume_id is not None:
                self.volumes[volume_id].instances.add(inst_id)
            if inst.intended == "running":
                host.used_gpus += n
                inst.allocated = True
            else:
                inst.phase = "create_stopped"
            self.instances[inst_id] = inst
            self.created_by_label[inst.label or ""] += 1
            return {"success": True, "new_contract": inst_id, "instance_api_key": inst.api_key}

    def _resolve_volume(self, info, host: Host):
        """(existing volume id, None) or (None, new volume spec) for volume_info, validated."""
        if info is None:
            return None, None
        vid = info["volume_id"]
        if info["create_new"]:
            vhost = self.hosts.get(vid // 100)
            if vhost is None or vid % 100 != VOLUME_OFFER_SUFFIX or vhost.failed:
                raise invalid_args(f"Volume offer {vid} is not available.")
            if vhost.machine_id != host.machine_id:
                raise invalid_args(f"Volume offer {vid} is on machine {vhost.machine_id}, but the instance "
                                   f"is on machine {host.machine_id}: local volumes must be on the same machine.")
            size = info["size"]
            if size > host.volume_free:
                raise invalid_args(f"Volume size {size} exceeds the {host.volume_free} GB available.")
            return None, {"size": size, "name": info["name"]}
        volume = self.volumes.get(vid)
        if volume is None:
            raise invalid_args(f"Volume {vid} does not exist.")
        if volume.machine_id != host.machine_id:
            raise invalid_args(f"Volume {vid} is on machine {volume.machine_id}, but the instance is on "
                               f"machine {host.machine_id}: local volumes can only be linked on their machine.")
        return vid, None

    def get_instance(self, inst_id):
        with self.lock:
            inst = self.instances.get(inst_id)
            return None if inst is None else self._row(inst, self.clock())

    def set_state(self, inst_id, state):
        with self.lock:
            inst = self.instances.get(inst_id)
            if inst is None:
                raise no_such_instance()
            self._set_state(inst, state, self.clock())
            return {"success": True}

    def set_states(self, ids, state):
        """Bulk start/stop: every id must exist, then all change together."""
        with self.lock:
            missing = [i for i in ids if i not in self.instances]
            if missing:
                raise no_such_instance()
            now = self.clock()
            for inst_id in ids:
                self._set_state(self.instances[inst_id], state, now)
            return {"success": True}

    def _set_state(self, inst: Instance, state, now):
        self.instance_actions[inst.id]["start" if state == "running" else "stop"] += 1
        if inst.intended == state:
            return
        inst.intended = state
        if state == "running":
            self._request_gpus(inst, now)
        else:
            inst.status_before_stop = self.actual_status(inst, now)
            self._release_gpus(inst, now)
            inst.phase, inst.phase_at = "stop", now

    def set_label(self, inst_id, label):
        with self.lock:
            inst = self.instances.get(inst_id)
            if inst is None:
                raise no_such_instance()
            inst.label = label
            return {"success": True}

    def destroy_instance(self, inst_id):
        with self.lock:
            inst = self.instances.get(inst_id)
            if inst is None:
                raise no_such_instance()
            if inst.intended == "running":
                self._release_gpus(inst, self.clock())
            if inst.volume_id is not None:
                self.volumes[inst.volume_id].instances.discard(inst_id)
            del self.instances[inst_id]
            return {"success": True}

    def list_instances(self, filters, order_by, limit, select_cols, after_token):
        """The v1 instance list page (see vast-api.md section 3)."""
        filters, order, directions, limit, select_cols = _validate_list(filters, order_by, limit, select_cols)
        columns = [c for c, _ in order]
        with self.lock:
            now = self.clock()
            everything = list(self.instances.values())
            label_counts = Counter(i.label or "" for i in everything)
            try:
                matched = [i for i in everything
                           if all(q.field_matches(c, self._column(i, c, now), cond) for c, cond in filters.items())]
            except q.QueryError as e:
                raise invalid_args(str(e)) from None
            keyed = [(tuple(self._column(i, c, now) for c in columns), i) for i in matched]
            if after_token is not None:
                after = _decode_token(after_token, len(columns))
                keyed = [(k, i) for k, i in keyed if q.compare_keys(k, after, directions) > 0]
            remaining = len(keyed)
            page = q.sort_rows(keyed, lambda pair: pair[0], directions, limit)
            rows = [self._row(i, now) for _, i in page]
        next_token = _encode_token(page[-1][0]) if remaining > limit else None
        if select_cols != ["*"]:
            rows = [{c: r.get(c) for c in select_cols} for r in rows]
        return {
            "success": True, "instances_found": len(matched), "total_instances": len(everything),
            "label_counts": dict(label_counts), "next_token": next_token, "instances": rows,
        }

    def instance_filters(self):
        with self.lock:
            now = self.clock()
            combos = {(self.actual_status(i, now), self.hosts[i.machine_id].verification,
                       self.hosts[i.machine_id].gpu_name) for i in self.instances.values()}
        return {"filters": [{"actual_status": a, "verification": v, "gpu_name": g} for a, v, g in sorted(combos)]}

    # ---- volumes ---------------------------------------------------------------------------

    def _add_volume(self, host: Host, size, name, now):
        vid = self.next_volume_id
        self.next_volume_id += 1
        self.volumes[vid] = Volume(id=vid, name=name, machine_id=host.machine_id, size=size, start_date=now)
        host.volume_used += size
        self.volumes_created_by_name[name or ""] += 1
        return vid

    def create_volume(self, body):
        if not isinstance(body, dict):
            raise invalid_json()
        offer_id, size, name = body.get("id"), body.get("size", DEFAULT_VOLUME_SIZE), body.get("name")
        if not _is_int(offer_id):
            raise invalid_args("Please provide a valid volume offer id.")
        if not _is_number(size) or size <= 0:
            raise invalid_args("size must be a positive number of GB.")
        if name is not None and not isinstance(name, str):
            raise invalid_args("name must be a string.")
        with self.lock:
            host = self.hosts.get(offer_id // 100)
            if host is None or offer_id % 100 != VOLUME_OFFER_SUFFIX or host.failed:
                raise ApiError(404, "no_such_ask", f"Volume offer {offer_id} is not available.")
            if size > host.volume_free:
                raise invalid_args(f"Volume size {size} exceeds the {host.volume_free} GB available.")
            vid = self._add_volume(host, size, name, self.clock())
        return {"success": True, "volume_name": f"V.{vid}"}

    def list_volumes(self):
        with self.lock:
            rows = []
            for v in self.volumes.values():
                host = self.hosts[v.machine_id]
                rows.append({
                    "id": v.id, "label": v.name, "status": "offline" if host.failed else "online",
                    "type": "local_volume", "disk_space": v.size, "machine_id": v.machine_id,
                    "host_id": host.host_id, "instances": sorted(v.instances), "start_date": v.start_date,
                    "disk_name": f"nvme-{host.machine_id}", "driver_version": host.driver_version,
                    "cuda_max_good": host.cuda_max_good, "inet_up": host.inet_up, "inet_down": host.inet_down,
                    "reliability2": host.reliability, "verification": host.verification,
                    "geolocation": host.geolocation, "public_ipaddr": host.public_ipaddr,
                    "os_version": "22.04", "cluster_id": None,
                    "storage_total_cost": round(v.size * host.storage_cost / HOURS_PER_MONTH, 6),
                })
        return {"volumes": rows}

    def delete_volume(self, vid):
        if not _is_int(vid):
            raise invalid_args("Please provide a valid volume ID.")
        with self.lock:
            volume = self.volumes.get(vid)
            if volume is None:
                raise ApiError(404, "no_such_volume", "Volume with that ID does not exist.")
            if volume.instances:
                raise invalid_args(f"Volume {vid} is in use by instances {sorted(volume.instances)}; "
                                   "destroy them before deleting the volume.")
            del self.volumes[vid]
            self.hosts[volume.machine_id].volume_used -= volume.size
        return {"success": True}

    # ---- control routes --------------------------------------------------------------------

    def _host(self, machine_id):
        host = self.hosts.get(machine_id)
        if host is None:
            raise ApiError(404, "no_such_machine", f"Machine {machine_id} not found")
        return host

    def fail_instance(self, inst_id):
        with self.lock:
            inst = self.instances.get(inst_id)
            if inst is None:
                raise no_such_instance()
            inst.failed = True
        return {"success": True}

    def fail_host(self, machine_id):
        with self.lock:
            self._host(machine_id).failed = True
        return {"success": True}

    def rent_out_host(self, machine_id):
        with self.lock:
            self._host(machine_id).rented_out = True
        return {"success": True}

    def restore_host(self, machine_id):
        with self.lock:
            host = self._host(machine_id)
            host.failed = host.rented_out = False
            self._schedule(host, self.clock())
        return {"success": True}

    def ledger(self):
        with self.lock:
            now = self.clock()
            instances = [{
                "id": i.id, "label": i.label, "machine_id": i.machine_id, "num_gpus": i.num_gpus,
                "actual_status": self.actual_status(i, now), "intended_status": i.intended,
                "cur_state": "running" if i.allocated else "stopped", "volume_id": i.volume_id,
                "start_date": i.start_date, "failed": i.failed,
            } for i in self.instances.values()]
            volumes = [{
                "id": v.id, "name": v.name, "machine_id": v.machine_id, "size": v.size,
                "instances": sorted(v.instances), "start_date": v.start_date,
            } for v in self.volumes.values()]
        return {"instances": instances, "volumes": volumes}

    def gpu_names(self):
        return {"gpu_names": list(GPU_NAMES)}


def _route_key(route):
    # "PUT /api/v0/asks/{id}" and "PUT /api/v0/asks/{id}/" name the same route
    return route.strip().rstrip("/")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _offer_matches(row, filters, storage):
    view = dict(row, verified=row["verification"] == "verified", external=False,
                datacenter=row["hosting_type"] == 1)
    return row["disk_space"] >= storage and q.row_matches(view, filters)


def _validate_create(body):
    """The create-instance body as the CLI sends it, type-checked."""
    if not isinstance(body, dict):
        raise invalid_json()
    image, label, onstart = body.get("image"), body.get("label"), body.get("onstart")
    disk = body.get("disk", 10)
    env = body.get("env") or {}
    runtype = body.get("runtype")
    target_state = body.get("target_state") or "running"
    for name, value, limit in (("image", image, 1024), ("label", label, 256), ("onstart", onstart, None),
                               ("runtype", runtype, None)):
        if value is not None and not isinstance(value, str):
            raise invalid_args(f"{name} must be a string")
        if limit and value is not None and len(value) > limit:
            raise invalid_args(f"{name} is longer than {limit} characters")
    if not _is_number(disk) or disk <= 0:
        raise invalid_args("disk must be a positive number of GB")
    if not isinstance(env, dict) or not all(isinstance(v, str) and len(v) <= 256 for v in env.values()):
        raise invalid_args("env must be an object of string values")
    if target_state not in ("running", "stopped"):
        raise invalid_args("target_state must be 'running' or 'stopped'")
    info = body.get("volume_info")
    if info is not None:
        if not isinstance(info, dict) or not _is_int(info.get("volume_id")):
            raise invalid_args("volume_info needs an integer volume_id")
        if not isinstance(info.get("mount_path"), str) or not info["mount_path"]:
            raise invalid_args("volume_info needs a mount_path")
        info = {"volume_id": info["volume_id"], "mount_path": info["mount_path"],
                "create_new": bool(info.get("create_new")), "size": info.get("size", DEFAULT_VOLUME_SIZE),
                "name": info.get("name")}
        if info["create_new"] and (not _is_number(info["size"]) or info["size"] <= 0):
            raise invalid_args("volume_info.size must be a positive number of GB")
        if info["name"] is not None and not isinstance(info["name"], str):
            raise invalid_args("volume_info.name must be a string")
    return {"image": image, "label": label, "onstart": onstart, "disk": float(disk), "env": env,
            "runtype": runtype, "target_state": target_state, "volume_info": info}


def _validate_list(filters, order_by, limit, select_cols):
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        raise invalid_args("select_filters must be an object")
    for column in filters:
        if column not in FILTERABLE_INSTANCE_COLUMNS:
            raise invalid_args(f"cannot filter on column {column!r}")
    order_by = order_by or [{"col": "id", "dir": "asc"}]
    if not isinstance(order_by, list):
        raise invalid_args("order_by must be a list")
    order = []
    for item in order_by:
        if not (isinstance(item, dict) and item.get("col") in FILTERABLE_INSTANCE_COLUMNS
                and item.get("dir", "asc") in ("asc", "desc")):
            raise invalid_args(f"invalid order_by item {item!r}")
        order.append((item["col"], item.get("dir", "asc")))
    if "id" not in [c for c, _ in order]:
        order.append(("id", "asc"))  # a total order makes the page tokens exact
    try:
        limit = INSTANCE_PAGE_MAX if limit is None else int(limit)
    except (TypeError, ValueError):
        raise invalid_args(f"invalid limit {limit!r}") from None
    limit = INSTANCE_PAGE_DEFAULT_WHEN_NONPOSITIVE if limit <= 0 else min(limit, INSTANCE_PAGE_MAX)
    select_cols = select_cols or ["*"]
    if not isinstance(select_cols, list) or not all(isinstance(c, str) for c in select_cols):
        raise invalid_args("select_cols must be a list of column names")
    if "*" in select_cols:
        select_cols = ["*"]
    return filters, order, [d for _, d in order], limit, select_cols


def _encode_token(values):
    # keyset pagination: the token is the sort key of the last row returned
    return base64.urlsafe_b64encode(json.dumps({"values": list(values)}).encode()).decode()


def _decode_token(token, width):
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))["values"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        values = None
    if not isinstance(values, list) or len(values) != width:
        raise ApiError(400, "invalid_token", "Invalid pagination token")
    return tuple(values)
