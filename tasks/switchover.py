"""Planned switchovers: an operator moves the primary to the standby at a time of their choosing.

``POST /api/v1/warmpool/switchover/<machine>`` writes the plan into the pool record
(``scheduled_switchover``; ``save_pool`` indexes it by time), so it survives restarts.
Beat runs ``check_switchovers`` every HEALTH_CHECK_INTERVAL, on the health queue, so a plan
starts within one interval of its time. It starts the failover path with trigger
``switchover``: nothing to confirm (the primary is fine), the same fencing and phases, and
no count against the cap per minute, as a manual test. A plan whose pool is busy or not active
(an operation runs, or it is degraded) waits for the next check; a disabled pool's plan is
dropped with a ``switchover_dropped`` event. ``tasks/expiry.py`` takes the same path, with
trigger ``expiry``, for a primary whose rental ends.
"""

import time

from celery import shared_task

from app import operations, runtime
from app.pools import State, unschedule_switchover


@shared_task(name="warmpool.health.switchovers")
def check_switchovers() -> dict[str, str]:
    """Start the switchovers that are due."""
    return {pid: _start(pid) for pid in runtime.store().due_switchovers(time.time())}


def _start(pid: str) -> str:
    s = runtime.store()
    with s.lease_if_free(pid, runtime.settings().lock_ttl) as lease:
        pool = lease and s.get_pool(pid)
        if not lease or pool is None:
            return "busy or no record"  # the next check looks again; a rebuild keeps or drops the plan
        planned = pool.get("scheduled_switchover")
        if not planned:
            return "not planned"
        if not pool["enabled"]:
            unschedule_switchover(pool)
            s.save_pool(pool, lease.held)
            s.event(pid, "switchover_dropped", f"the switchover planned for {planned['at']} is dropped: the pool is "
                                               "disabled", scheduled_for=planned["at"], reason="disabled")
            return "dropped"
        if pool["state"] != State.ACTIVE:
            return f"waiting: {pool['state']}"
        unschedule_switchover(pool)
        s.save_pool(pool, lease.held)
        operations.failover(pid, lease.hand_off(), "switchover")
        return "switchover"
