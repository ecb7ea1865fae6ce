"""The simulated world: the hosts, and the offers, volumes and instances they carry.

One ``World`` per app. Every component shares the world's lock and its public methods take it;
the world itself only composes them and handles what spans several (a host failing or coming
back, the ledger and the stats).
"""

import threading

from .clock import Clock
from .copies import Copies
from .errors import ApiError
from .faults import Faults
from .instances import Instances
from .inventory import GPU_NAMES, Host, build_hosts
from .offers import Offers
from .volumes import Volumes
from .webhooks import Webhooks


class World:
    def __init__(self, seed=0, time_scale=1.0):
        self.seed = seed
        self.clock = Clock(time_scale)
        self.lock = threading.RLock()
        self.faults = Faults(seed)
        self.webhooks = Webhooks()
        self.reset()

    def reset(self):
        """Back to the seeded inventory with no instances, volumes, stats or faults."""
        with self.lock:
            self.clock.epoch = self.clock.now()
            self.hosts: dict[int, Host] = {h.machine_id: h for h in build_hosts(self.seed)}
            self.offers = Offers(self.hosts, self.clock, self.lock)
            self.volumes = Volumes(self.hosts, self.offers, self.clock, self.lock)
            self.instances = Instances(self.hosts, self.offers, self.volumes, self.clock, self.lock, self.seed,
                                       self.webhooks.publish)
            self.copies = Copies(self.hosts, self.offers, self.volumes, self.clock, self.lock)
            self.faults.reset()
            self.webhooks.clear()

    def tick(self):
        """Apply what has come due by now (rentals ending or ended, copies completed); whether anything did."""
        with self.lock:
            now = self.clock.now()
            rentals = self.instances.rentals_due(now)
            return self.copies.complete(now) or rentals

    def config(self):
        return {**self.clock.config(), "seed": self.seed}

    def gpu_names(self):
        return {"gpu_names": list(GPU_NAMES)}

    # ---- hosts -----------------------------------------------------------------------------

    def _host(self, machine_id):
        host = self.hosts.get(machine_id)
        if host is None:
            raise ApiError(404, "no_such_machine", f"Machine {machine_id} not found")
        return host

    def fail_host(self, machine_id):
        """The machine drops off: its instances and volumes go offline, its offers disappear."""
        with self.lock:
            host = self._host(machine_id)
            if not host.failed:
                self.instances.host_failing(machine_id)
            host.failed = True
            self.copies.host_failed(machine_id)
        return {"success": True}

    def rent_out_host(self, machine_id):
        """Other renters take every GPU of the machine: its stopped instances cannot start."""
        with self.lock:
            self._host(machine_id).rented_out = True
        return {"success": True}

    def restore_host(self, machine_id):
        with self.lock:
            host = self._host(machine_id)
            now = self.clock.now()
            if host.failed:
                self.instances.back_online(machine_id, now)
            host.failed = host.rented_out = False
            self.instances.gpus.schedule(host, now)
        return {"success": True}

    # ---- what happened ---------------------------------------------------------------------

    def ledger(self):
        with self.lock:
            return {"instances": self.instances.ledger_rows(self.clock.now()), "volumes": self.volumes.ledger_rows(),
                    "violations": list(self.instances.split_brain.violations)}

    def stats(self):
        with self.lock:
            return {
                **self.faults.stats(),
                "instance_actions": {str(k): dict(v) for k, v in self.instances.actions.items()},
                "created_by_label": dict(self.instances.created_by_label),
                "volumes_created_by_name": dict(self.volumes.created_by_name),
                "violations": len(self.instances.split_brain.violations),
            }
