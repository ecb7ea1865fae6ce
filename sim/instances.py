"""Instances: create from an offer, start, stop, label, destroy, the single row and the v1 list."""

import hashlib
import re
from collections import Counter, defaultdict

from . import accounts
from . import query as q
from .errors import ApiError, invalid_args, invalid_json, is_int, is_number, no_such_instance
from .gpus import GpuScheduler
from .inventory import Host
from .lifecycle import Instance, actual_status, is_offline, status_msg
from .listing import decode_token, encode_token, validate_list
from .offers import monthly_to_hourly
from .rentals import EndDates
from .split_brain import SplitBrainWatch
from .volumes import DEFAULT_VOLUME_SIZE, check_volume_name
from .webhooks import EXPIRY_WARNING_SECONDS

FIRST_INSTANCE_ID = 10_000_001
# Vast maps each container port an instance asks for (22, and every ``-p`` key of its env) to an external port
# of the host's shared address, at most 64 of them; each instance here gets a block of its own, so two
# instances on one host, like a failed-over primary and its predecessor, never share an external port
PORT_BLOCK, FIRST_HOST_PORT, PORT_BLOCKS = 64, 20_000, 700
PORT_REQUEST = re.compile(r"-p\s*(?:\d+:)?(\d+)(?:/(tcp|udp))?")


class Instances:
    def __init__(self, hosts: dict[int, Host], offers, volumes, clock, lock, seed, notify):
        """``notify(event, inst, at, **extra)`` sends an account notification (see ``webhooks``)."""
        self.hosts, self.offers, self.volumes, self.clock, self.lock = hosts, offers, volumes, clock, lock
        self.seed, self.notify = seed, notify
        self.by_id: dict[int, Instance] = {}
        self.next_id = FIRST_INSTANCE_ID
        self.gpus = GpuScheduler(hosts, self.by_id)
        self.split_brain = SplitBrainWatch(clock)
        self.end_dates = EndDates(self.by_id, lambda inst: inst.end_date)
        self.expiry_warnings = EndDates(self.by_id, lambda inst: inst.end_date - EXPIRY_WARNING_SECONDS)
        self.actions: dict[int, Counter] = defaultdict(Counter)
        self.created_by_label = Counter()

    def status(self, inst: Instance, now):
        return actual_status(inst, self.hosts[inst.machine_id], self.clock, now)

    def _get(self, inst_id) -> Instance:
        inst = self.by_id.get(inst_id)
        if inst is None or not accounts.visible(inst.account):
            raise no_such_instance()
        return inst

    # ---- create ----------------------------------------------------------------------------

    def create(self, offer_id, body):
        """``PUT /api/v0/asks/{offer_id}/``: rent the offer's GPUs, maybe with a volume."""
        spec = _validate_create(body)
        with self.lock:
            now = self.clock.now()
            found = self.offers.gpu_offer(offer_id)
            if found is None:
                raise ApiError(404, "invalid_args",
                               f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available.",
                               ask_id=offer_id)
            host, n = found
            volume_id, new_volume = self.volumes.resolve_link(spec["volume_info"], host)
            inst_id = self.next_id
            self.next_id += 1
            if new_volume is not None:
                volume_id = self.volumes.add(host, new_volume["size"], new_volume["name"], now)
            inst = Instance(
                id=inst_id, machine_id=host.machine_id, num_gpus=n, bundle_id=offer_id,
                dph_base=round(host.gpu_price * n, 4), image=spec["image"], label=spec["label"],
                disk=spec["disk"], onstart=spec["onstart"], env=spec["env"], runtype=spec["runtype"],
                start_date=now, api_key=hashlib.sha256(f"{self.seed}:{inst_id}".encode()).hexdigest(),
                volume_id=volume_id, mount_path=spec["volume_info"] and spec["volume_info"].get("mount_path"),
                intended=spec["target_state"], phase_at=now, end_date=self.offers.end_date(),
                account=accounts.current.get(),
            )
            self.by_id[inst_id] = inst
            self.track_end_date(inst)
            if inst.intended == "running":
                self.gpus.take(inst)
                self._check_split_brain(inst, "create", now)
            else:
                inst.phase = "create_stopped"
            if volume_id is not None:
                self.volumes.by_id[volume_id].instances.add(inst_id)
            self.created_by_label[inst.label or ""] += 1
            return {"success": True, "new_contract": inst_id, "instance_api_key": inst.api_key}

    # ---- change ----------------------------------------------------------------------------

    def set_state(self, inst_id, state):
        with self.lock:
            self._set_state(self._get(inst_id), state, self.clock.now())
            return {"success": True}

    def set_states(self, ids, state):
        """Bulk start/stop: every id must exist (and be startable, for a start), then all change together."""
        with self.lock:
            instances = [self._get(i) for i in ids]
            now = self.clock.now()
            for inst in instances:
                self._refuse_start_after_end(inst, state, now)
            for inst in instances:
                self._set_state(inst, state, now)
            return {"success": True}

    def _refuse_start_after_end(self, inst: Instance, state, now):
        if state == "running" and inst.ended(now):
            raise invalid_args(f"Instance {inst.id} cannot be started: its rental ended at {inst.end_date:.0f} "
                               "(end_date, epoch seconds).")

    def _set_state(self, inst: Instance, state, now):
        self._refuse_start_after_end(inst, state, now)
        self.actions[inst.id]["start" if state == "running" else "stop"] += 1
        if inst.intended == state:
            return
        if state == "running":
            inst.intended = state
            self.gpus.request(inst, now)
            self._check_split_brain(inst, "start", now)
        else:
            self._stop(inst, now)

    def _stop(self, inst: Instance, at):
        """Release the GPUs now; actual_status shows its old value until the stop delay after ``at``."""
        inst.status_before_stop = self.status(inst, at)
        inst.intended = "stopped"
        self.gpus.release(inst, self.clock.now())
        inst.phase, inst.phase_at = "stop", at

    def set_end_date(self, inst_id, body):
        """``POST /_sim/instances/<id>/end_date`` {"in_seconds": S}: the rental ends S wall-clock seconds from now."""
        seconds = body.get("in_seconds")
        if not is_number(seconds):
            raise invalid_args("in_seconds must be a number of seconds")
        with self.lock:
            inst = self._get(inst_id)
            now = self.clock.now()
            inst.end_date = now + seconds
            self.track_end_date(inst)
            self.rentals_due(now)
            return {"success": True, "end_date": inst.end_date}

    def track_end_date(self, inst: Instance):
        self.end_dates.track(inst)
        self.expiry_warnings.track(inst)

    def rentals_due(self, now):
        """Warn of rentals ending within a day; stop, as of their end date, those that ended.

        Returns whether anything changed.
        """
        with self.lock:
            warned = [i for i in self.expiry_warnings.due(now) if i.expiry_warned_for != i.end_date]
            for inst in warned:
                inst.expiry_warned_for = inst.end_date
                self.notify("rental_expiring", inst, now, end_date=inst.end_date)
            ended = self.end_dates.due(now)
            for inst in ended:
                if inst.intended == "running":
                    self._stop(inst, inst.end_date)
            return bool(warned or ended)

    def _on_volume_with(self, inst: Instance):
        """The other instances linked to ``inst``'s volume."""
        if inst.volume_id is None:
            return []
        return [self.by_id[i] for i in self.volumes.by_id[inst.volume_id].instances if i != inst.id]

    def _check_split_brain(self, inst: Instance, cause, now, seen=None):
        self.split_brain.check(inst, self._on_volume_with(inst), cause, now, seen)

    def back_online(self, machine_id, now):
        """The machine's host came back: its instances meant to run are running again."""
        seen = set()
        for inst in self.by_id.values():
            if inst.machine_id == machine_id and inst.intended == "running" and not inst.failed:
                self._check_split_brain(inst, "host_restore", now, seen)

    def set_label(self, inst_id, label):
        with self.lock:
            self._get(inst_id).label = label
            return {"success": True}

    def destroy(self, inst_id):
        with self.lock:
            inst = self._get(inst_id)
            if inst.intended == "running":
                self.gpus.release(inst, self.clock.now())
            if inst.volume_id is not None:
                self.volumes.by_id[inst.volume_id].instances.discard(inst_id)
            del self.by_id[inst_id]
            return {"success": True}

    def fail(self, inst_id):
        """The instance goes offline; it keeps its GPUs until stopped or destroyed."""
        with self.lock:
            inst = self._get(inst_id)
            if not is_offline(inst, self.hosts[inst.machine_id]):
                self.notify("instance_offline", inst, self.clock.now())
            inst.failed = True
        return {"success": True}

    def host_failing(self, machine_id):
        """The machine is about to fail: its instances that were online go offline with it."""
        with self.lock:
            now = self.clock.now()
            for inst in self.by_id.values():
                if inst.machine_id == machine_id and not is_offline(inst, self.hosts[machine_id]):
                    self.notify("instance_offline", inst, now)

    # ---- read ------------------------------------------------------------------------------

    def get(self, inst_id):
        with self.lock:
            inst = self.by_id.get(inst_id)
            return None if inst is None or not accounts.visible(inst.account) else self._row(inst, self.clock.now())

    def _column(self, inst: Instance, name, now):
        """The value of a filterable/sortable instance column."""
        if name == "actual_status":
            return self.status(inst, now)
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
        return getattr(self.hosts[inst.machine_id], name, None)

    def _row(self, inst: Instance, now):
        host = self.hosts[inst.machine_id]
        actual = self.status(inst, now)
        running = actual == "running"
        ssh_port = 10_000 + inst.id % 50_000
        volume = self.volumes.by_id.get(inst.volume_id)
        return {
            "id": inst.id, "machine_id": inst.machine_id, "host_id": host.host_id,
            "bundle_id": inst.bundle_id, "actual_status": actual, "intended_status": inst.intended,
            "cur_state": "running" if inst.allocated else "stopped", "next_state": inst.intended,
            "status_msg": status_msg(inst, actual, now), "label": inst.label,
            "image_uuid": inst.image, "image_runtype": inst.runtype, "image_args": [],
            "onstart": inst.onstart, "extra_env": [[k, v] for k, v in inst.env.items()],
            "template_id": None, "template_hash_id": None, "template_name": None,
            "ssh_host": f"ssh{inst.id % 9 + 1}.vast.ai", "ssh_idx": str(inst.id % 9 + 1),
            "ssh_port": ssh_port if running else None,
            "public_ipaddr": host.public_ipaddr,
            "ports": port_map(inst) if running else {},
            "direct_port_start": ssh_port if running else None,
            "direct_port_end": ssh_port + 10 if running else None,
            "gpu_name": host.gpu_name, "num_gpus": inst.num_gpus, "gpu_ram": host.gpu_ram,
            "gpu_totalram": host.gpu_ram * inst.num_gpus, "gpu_util": 0.0 if running else None,
            "gpu_frac": round(inst.num_gpus / host.total_gpus, 4),
            "cpu_ram": host.cpu_ram * inst.num_gpus // host.total_gpus,
            "cpu_cores_effective": host.cpu_cores * inst.num_gpus / host.total_gpus,
            "disk_space": inst.disk, "disk_usage": 0.0, "disk_util": 0.0,
            "dph_base": inst.dph_base,
            "dph_total": self.dph_total(inst),
            "storage_cost": host.storage_cost, "is_bid": False, "min_bid": round(inst.dph_base * 0.6, 4),
            "start_date": inst.start_date, "end_date": inst.end_date,
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

    def list(self, filters, order_by, limit, select_cols, after_token):
        """The v1 instance list page (see vast-api.md section 3)."""
        filters, order, directions, limit, select_cols = validate_list(filters, order_by, limit, select_cols)
        columns = [c for c, _ in order]
        with self.lock:
            now = self.clock.now()
            everything = [i for i in self.by_id.values() if accounts.visible(i.account)]
            label_counts = Counter(i.label or "" for i in everything)
            try:
                matched = [i for i in everything
                           if all(q.field_matches(c, self._column(i, c, now), cond) for c, cond in filters.items())]
            except q.QueryError as e:
                raise invalid_args(str(e)) from None
            keyed = [(tuple(self._column(i, c, now) for c in columns), i) for i in matched]
            if after_token is not None:
                after = decode_token(after_token, len(columns))
                keyed = [(k, i) for k, i in keyed if q.compare_keys(k, after, directions) > 0]
            remaining = len(keyed)
            page = q.sort_rows(keyed, lambda pair: pair[0], directions, limit)
            rows = [self._row(i, now) for _, i in page]
        next_token = encode_token(page[-1][0]) if remaining > limit else None
        if select_cols != ["*"]:
            rows = [{c: r.get(c) for c in select_cols} for r in rows]
        return {
            "success": True, "instances_found": len(matched), "total_instances": len(everything),
            "label_counts": dict(label_counts), "next_token": next_token, "instances": rows,
        }

    def filters(self):
        """``GET /api/v0/instances/filters/``: the (status, verification, GPU) combinations in use."""
        with self.lock:
            now = self.clock.now()
            combos = {(self.status(i, now), self.hosts[i.machine_id].verification,
                       self.hosts[i.machine_id].gpu_name) for i in self.by_id.values()}
        return {"filters": [{"actual_status": a, "verification": v, "gpu_name": g} for a, v, g in sorted(combos)]}

    def ledger_rows(self, now):
        return [{
            "id": i.id, "label": i.label, "machine_id": i.machine_id, "num_gpus": i.num_gpus,
            "actual_status": self.status(i, now), "intended_status": i.intended,
            "cur_state": "running" if i.allocated else "stopped", "volume_id": i.volume_id,
            "start_date": i.start_date, "end_date": i.end_date, "failed": i.failed, "onstart": i.onstart, "env": i.env,
            "dph_total": self.dph_total(i),
        } for i in self.by_id.values()]

    def dph_total(self, inst: Instance) -> float:
        """$/h as Vast lists it: the GPUs and the disk (``dph_base + storage_cost x disk / 720``)."""
        return round(inst.dph_base + monthly_to_hourly(inst.disk, self.hosts[inst.machine_id].storage_cost), 4)


def port_map(inst: Instance) -> dict:
    """The instance's ``ports`` as Vast lists them: ``{"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "20065"}]}``."""
    asked = {"22/tcp"} | {f"{m.group(1)}/{m.group(2) or 'tcp'}" for key in inst.env
                          if (m := PORT_REQUEST.fullmatch(key.strip()))}
    first = FIRST_HOST_PORT + (inst.id % PORT_BLOCKS) * PORT_BLOCK
    ordered = sorted(asked, key=lambda port: (int(port.split("/")[0]), port))[:PORT_BLOCK]
    return {port: [{"HostIp": "0.0.0.0", "HostPort": str(first + index)}] for index, port in enumerate(ordered)}


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
    if not is_number(disk) or disk <= 0:
        raise invalid_args("disk must be a positive number of GB")
    if not isinstance(env, dict) or not all(isinstance(v, str) and len(v) <= 256 for v in env.values()):
        raise invalid_args("env must be an object of string values")
    if target_state not in ("running", "stopped"):
        raise invalid_args("target_state must be 'running' or 'stopped'")
    info = body.get("volume_info")
    if info is not None:
        if not isinstance(info, dict) or not is_int(info.get("volume_id")):
            raise invalid_args("volume_info needs an integer volume_id")
        if not isinstance(info.get("mount_path"), str) or not info["mount_path"]:
            raise invalid_args("volume_info needs a mount_path")
        info = {"volume_id": info["volume_id"], "mount_path": info["mount_path"],
                "create_new": bool(info.get("create_new")), "size": info.get("size", DEFAULT_VOLUME_SIZE),
                "name": info.get("name")}
        if info["create_new"] and (not is_number(info["size"]) or info["size"] <= 0):
            raise invalid_args("volume_info.size must be a positive number of GB")
        check_volume_name(info["name"])
    return {"image": image, "label": label, "onstart": onstart, "disk": float(disk), "env": env,
            "runtype": runtype, "target_state": target_state, "volume_info": info}
