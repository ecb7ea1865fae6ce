"""GPU allocation on a host, event-driven: a GPU freed by a stop, a destroy or a host restore goes
at once to the instances scheduling on that host, first come first served."""

from collections import defaultdict

from .inventory import Host
from .lifecycle import Instance


class GpuScheduler:
    def __init__(self, hosts: dict[int, Host], instances: dict[int, Instance]):
        self.hosts, self.instances = hosts, instances
        # FIFO of instance ids scheduling on each machine
        self.waiting: dict[int, list[int]] = defaultdict(list)

    def _allocate(self, inst: Instance, host: Host):
        host.used_gpus += inst.num_gpus
        inst.allocated = True

    def take(self, inst: Instance):
        """A create with target running takes its GPUs at once (the offer showed them free)."""
        self._allocate(inst, self.hosts[inst.machine_id])

    def request(self, inst: Instance, now):
        """Allocate the instance's GPUs for a start, or queue it as scheduling until they free up."""
        host = self.hosts[inst.machine_id]
        if not self.waiting[host.machine_id] and host.free_gpus >= inst.num_gpus:
            self._allocate(inst, host)
            inst.phase, inst.phase_at = "start", now
        else:
            self.waiting[host.machine_id].append(inst.id)
            inst.phase, inst.phase_at = "wait", now

    def release(self, inst: Instance, now):
        if inst.allocated:
            self.hosts[inst.machine_id].used_gpus -= inst.num_gpus
            inst.allocated = False
        elif inst.phase == "wait":
            self.waiting[inst.machine_id].remove(inst.id)
        self.schedule(self.hosts[inst.machine_id], now)

    def schedule(self, host: Host, now):
        """Give freed GPUs to the instances scheduling on the host."""
        queue = self.waiting[host.machine_id]
        for inst_id in list(queue):
            inst = self.instances[inst_id]
            if host.free_gpus < inst.num_gpus:
                continue
            queue.remove(inst_id)
            self._allocate(inst, host)
            inst.phase, inst.phase_at = "start", now
