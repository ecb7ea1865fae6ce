"""Design rule 3 checked exactly: never two instances up at once on one volume.

An instance is *up* from the moment it is meant to run until its stop is confirmed:

- its intended status is "running" (whatever it shows: created, loading, scheduling for GPUs,
  running, or offline with its host, since it runs again when the host comes back), or
- it was stopped less than the stop delay ago (``clock.STOP_SECONDS`` x time scale) while it
  showed anything but "stopped" or "offline": its actual_status still shows the old status until
  the stop has taken effect, so a client confirms the stop by waiting for actual_status "stopped"
  (or "offline": an instance whose host is gone stops at once).

Whenever an instance is started, created with target running, or comes back online with its
host while another instance on the same volume is up, a violation is recorded.
"""

from .clock import STOP_SECONDS
from .lifecycle import Instance


class SplitBrainWatch:
    def __init__(self, clock):
        self.clock = clock
        self.violations: list[dict] = []

    def is_up(self, inst: Instance, now):
        if inst.intended == "running":
            return True
        return (inst.phase == "stop" and inst.status_before_stop not in ("stopped", "offline")
                and now - inst.phase_at < self.clock.delay(STOP_SECONDS))

    def check(self, inst: Instance, others, cause, now, seen=None):
        """Record a violation for each other instance on ``inst``'s volume that is up.

        ``seen`` (a set of id pairs) keeps one event from recording a pair twice.
        """
        for other in others:
            pair = frozenset((inst.id, other.id))
            if other.id == inst.id or not self.is_up(other, now) or (seen is not None and pair in seen):
                continue
            if seen is not None:
                seen.add(pair)
            self.violations.append({"volume_id": inst.volume_id, "instance_ids": [inst.id, other.id],
                                    "at": now, "cause": cause})
