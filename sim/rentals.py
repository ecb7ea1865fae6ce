"""Rental end dates: every instance ends at the ``end_date`` its offer's ``duration`` gave it.

A heap keyed by end date finds the instances that are due without scanning them all; an entry
whose instance is gone or whose end date has moved since is skipped when it comes up.
"""

import heapq

from .lifecycle import Instance


class EndDates:
    def __init__(self, instances: dict[int, Instance], key):
        """``key(inst)`` is the time at which an instance comes due (its end date, or a day before)."""
        self.instances, self.key = instances, key
        self.heap: list[tuple[float, int]] = []

    def track(self, inst: Instance):
        heapq.heappush(self.heap, (self.key(inst), inst.id))

    def due(self, now) -> list[Instance]:
        """Instances that came due by ``now``, each once per end date."""
        found = []
        while self.heap and self.heap[0][0] <= now:
            when, inst_id = heapq.heappop(self.heap)
            inst = self.instances.get(inst_id)
            if inst is not None and self.key(inst) == when:
                found.append(inst)
        return found
