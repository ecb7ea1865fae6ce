"""An instance and the status it shows, computed from the time of its last event (no timers).

``phase`` is what the last event started ("create", "create_stopped", "start", "wait" for
scheduling, "stop") and ``phase_at`` when, so a smaller time scale makes every delay shorter.
"""

from dataclasses import dataclass

from .clock import CREATED_SECONDS, LOAD_SECONDS, START_SECONDS, STOP_SECONDS
from .inventory import Host


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
    end_date: float  # epoch seconds: the rental ends then and cannot start again
    volume_id: int | None = None
    mount_path: str | None = None
    intended: str = "running"
    allocated: bool = False  # holds num_gpus GPUs of its host
    phase: str = "create"
    phase_at: float = 0.0
    status_before_stop: str | None = None
    failed: bool = False
    expiry_warned_for: float | None = None  # the end date a "rental_expiring" event was sent for
    account: str | None = None  # the account that made it (sim/accounts.py)

    def ended(self, now):
        return now >= self.end_date


def is_offline(inst: Instance, host: Host):
    return inst.failed or host.failed


def actual_status(inst: Instance, host: Host, clock, now):
    if is_offline(inst, host):
        return "offline"
    elapsed = now - inst.phase_at
    if inst.phase == "create":
        if elapsed < clock.delay(CREATED_SECONDS):
            return "created"
        return "loading" if elapsed < clock.delay(LOAD_SECONDS) else "running"
    if inst.phase == "create_stopped":
        return "created" if elapsed < clock.delay(CREATED_SECONDS) else "stopped"
    if inst.phase == "start":
        return "loading" if elapsed < clock.delay(START_SECONDS) else "running"
    if inst.phase == "stop" and elapsed < clock.delay(STOP_SECONDS):
        return inst.status_before_stop
    return "stopped"


def status_msg(inst: Instance, actual, now):
    if actual == "offline":
        return "Instance is offline: its host machine is unreachable"
    if inst.ended(now):
        return "Rental period ended: the instance is stopped and cannot be started again"
    if inst.phase == "wait":
        return (f"scheduling: waiting for {inst.num_gpus} GPU(s) on machine "
                f"{inst.machine_id} to become available")
    return {
        "created": "Instance created",
        "loading": f"Loading image {inst.image}",
        "running": f"success, running {inst.image}/{inst.runtype or 'ssh'}",
    }.get(actual, "Instance stopped")
