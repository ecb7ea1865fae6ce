"""The state file of ``warmpool sim --state-file PATH``: the world kept across a restart.

What a restart against the real Vast would keep is kept: instances (with their ids, statuses,
GPUs and end dates), volumes (with their data versions and copies), the id counters, failed or
rented-out hosts, webhook receivers, the split-brain violations and the per-instance stats.
Faults, rate limits and request counts belong to the run and start empty. Every timestamp is
wall-clock, so simulated time goes on across the restart (an instance loading when the
simulator stopped is running if it comes back late enough).

Writes are atomic: a temporary file in the same directory, flushed to disk, then renamed over
the state file, so a crash leaves the previous state or the new one, never half of one.
"""

import json
import logging
import os
import tempfile
import threading
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

from .lifecycle import Instance
from .volumes import Copy, Volume

log = logging.getLogger(__name__)

FORMAT = 1


class StateFileError(Exception):
    """A state file that cannot be read back."""


def snapshot(world) -> dict:
    """The world as JSON-ready data."""
    with world.lock:
        instances, volumes = world.instances, world.volumes
        return {
            "format": FORMAT, "seed": world.seed, "epoch": world.clock.epoch,
            "hosts": [{"machine_id": h.machine_id, "failed": h.failed, "rented_out": h.rented_out}
                      for h in world.hosts.values() if h.failed or h.rented_out],
            "next_volume_id": volumes.next_id,
            "volumes": [{**asdict(v), "instances": sorted(v.instances)} for v in volumes.by_id.values()],
            "volumes_created_by_name": dict(volumes.created_by_name),
            "next_instance_id": instances.next_id,
            "instances": [asdict(i) for i in instances.by_id.values()],
            "waiting": {str(m): list(ids) for m, ids in instances.gpus.waiting.items() if ids},
            "instance_actions": {str(k): dict(v) for k, v in instances.actions.items()},
            "created_by_label": dict(instances.created_by_label),
            "violations": list(instances.split_brain.violations),
            "webhooks": world.webhooks.export(),
        }


def restore(world, data: dict):
    """Make ``world`` what ``snapshot`` saw."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateFileError(f"not a simulator state file of format {FORMAT}")
    with world.lock:
        world.seed = data["seed"]
        world.reset()
        world.clock.epoch = data["epoch"]
        for row in data["hosts"]:
            host = world.hosts[row["machine_id"]]
            host.failed, host.rented_out = row["failed"], row["rented_out"]
        volumes = world.volumes
        for row in data["volumes"]:
            copy = row["copy"] and Copy(**row["copy"])
            volume = Volume(**{**row, "instances": set(row["instances"]), "copy": copy})
            volumes.by_id[volume.id] = volume
            world.hosts[volume.machine_id].volume_used += volume.size
        volumes.next_id = data["next_volume_id"]
        volumes.created_by_name.update(data["volumes_created_by_name"])
        instances = world.instances
        for row in data["instances"]:
            inst = Instance(**row)
            instances.by_id[inst.id] = inst
            if inst.allocated:
                world.hosts[inst.machine_id].used_gpus += inst.num_gpus
            instances.track_end_date(inst)
        instances.gpus.waiting.update({int(m): ids for m, ids in data["waiting"].items()})
        instances.next_id = data["next_instance_id"]
        instances.actions = defaultdict(Counter, {int(k): Counter(v) for k, v in data["instance_actions"].items()})
        instances.created_by_label.update(data["created_by_label"])
        instances.split_brain.violations = list(data["violations"])
        world.copies.recount()
        world.webhooks.restore(data["webhooks"])


class StateFile:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()  # one writer at a time, each writing the newest world

    def load(self, world) -> bool:
        """Restore ``world`` from the file if there is one; whether there was."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return False
        try:
            restore(world, json.loads(text))
        except (StateFileError, ValueError, KeyError, TypeError) as e:
            raise StateFileError(f"{self.path}: cannot restore the simulator from it ({e})") from None
        log.info("simulator state loaded from %s", self.path)
        return True

    def save(self, world):
        with self.lock:
            body = json.dumps(snapshot(world))
            fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(body)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, self.path)
            except BaseException:
                os.unlink(temp)
                raise
