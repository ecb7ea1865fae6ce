"""Every kind of event the service records on a pool: what it means, the webhook type it is published as, and
what it counts in /metrics. One catalogue, read by every consumer of events.

A kind is recorded by ``store().event(pid, kind, message, **data)`` (a step's ``op.event(kind, ...)``) into the
pool's history (``GET /warmpool/events/<id>``). In the same Redis transaction, the store's event sinks read the
kind's row here: the webhook outbox (``app/store/webhooks.py``) queues a delivery for each kind that has a
``webhook`` type, and the metrics sink (``app/store/metrics.py``) counts the kinds that start, end or time a
failover or report a lost standby. A kind recorded anywhere in ``app/`` or ``tasks/`` has a row here
(``tests/unit/test_events.py`` reads the source to check it); a ``webhook`` added to a row publishes that kind.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class EventKind:
    """One kind of event.

    ``webhook``: the type its subscribers see (none: the pool's history only). ``starts_failover``: counted in
    ``warmpool_failovers_started`` by trigger. ``failover_result``: the result it ends a failover with in
    ``warmpool_failovers`` (success, failure, cancelled). ``timed``: its ``recovery_time_seconds`` and ``phases``
    feed ``warmpool_failover_duration_seconds`` and ``warmpool_failover_phase_seconds``. ``counts_standby_lost``:
    counted in ``warmpool_standbys_lost`` by the status the provider showed.
    """
    meaning: str
    webhook: str | None = None
    starts_failover: bool = False
    failover_result: str | None = None
    timed: bool = False
    counts_standby_lost: bool = False


EVENT_KINDS: dict[str, EventKind] = {
    # the pool's life: enable, provision, disable, clean up
    "enabled": EventKind("an operator enabled the pool; a provision starts unless its instances are there"),
    "host_found": EventKind("the search picked a host with enough free GPUs for the pool"),
    "volume_created": EventKind("the pool's volume was made on its host"),
    "primary_created": EventKind("a primary instance was made (by a provision, or on the replica's host)"),
    "standby_created": EventKind("a stopped standby was made on the pool's host and volume"),
    "disabled": EventKind("an operator disabled the pool: resources kept, no health checks"),
    "instances_destroyed": EventKind("a cleanup destroyed the pool's instances"),
    "cleaned_up": EventKind("a cleanup deleted the pool's volumes: nothing is left on the provider"),
    # failure detection
    "primary_failed": EventKind("the sweep (or a standby's recheck) saw the primary down; a failover check follows"),
    "failover_trigger_stale": EventKind("a failover trigger came after the pool moved on: nothing was done"),
    "provider_notice": EventKind("Vast notified a change to one of the pool's instances"),
    "sweep_brake": EventKind("the provider listed no live standby for most pools: the sweep acted on none"),
    # failovers
    "failover_started": EventKind("a failover began: the failure is confirmed and the machine's lock taken",
                                  webhook="failover.started", starts_failover=True),
    "failover_cap_exceeded": EventKind("past FAILOVERS_PER_MINUTE: the failure is confirmed once more, then the "
                                       "failover goes on"),
    "failover_cancelled": EventKind("no failover: the confirmation found the primary running after all",
                                    webhook="failover.cancelled", failover_result="cancelled"),
    "split_brain_resolved": EventKind("an instance besides the primary carried the primary's label: it was stopped",
                                      webhook="split_brain.resolved"),
    "stop_refused": EventKind("the provider refused to stop an instance on a lost host"),
    "standby_given_up": EventKind("the standby did not run within STANDBY_START_TIMEOUT: a fresh one is made"),
    "fresh_standby": EventKind("a fresh instance was made on the same host and volume to replace a standby given up"),
    "failover_completed": EventKind("the standby is promoted: the pool serves again (recovery time, phases)",
                                    webhook="failover.completed", failover_result="success", timed=True),
    "host_failover_completed": EventKind("the primary runs on the replica's host: the pool moved there",
                                         webhook="host_failover.completed", failover_result="success"),
    "failover_failed": EventKind("the failover failed before the promotion (or the move to the replica's host "
                                 "failed)", webhook="failover.failed", failover_result="failure"),
    "compensation_incomplete": EventKind("a failed operation could not undo everything it had made"),
    # degraded pools and the healer
    "degraded": EventKind("the pool is degraded: an operation failed, or its host has no free GPU for a standby",
                          webhook="pool.degraded"),
    "healed": EventKind("a degraded pool's host has a free GPU again: the pool is active", webhook="pool.healed"),
    "heal_given_up": EventKind("a pool that never held an instance stopped being healed after a few failures",
                               webhook="pool.heal_given_up"),
    "pool_rebuilt": EventKind("the pool's record was rebuilt from the provider after Redis lost it",
                              webhook="pool.rebuilt"),
    "orphan": EventKind("a labelled provider resource that no pool references was found"),
    # standbys
    "standby_lost": EventKind("the provider shows the stopped standby lost: a new one is made on the same host",
                              webhook="standby.lost", counts_standby_lost=True),
    "standby_replaced": EventKind("a new standby replaces one promoted, lost or whose rental ends",
                                  webhook="standby.replaced"),
    # rentals that end and planned switchovers
    "rental_ending": EventKind("an instance's rental ends within EXPIRY_MARGIN: it is replaced or switched over"),
    "rental_end_unavoidable": EventKind("the host rents no GPU that outlasts the margin: the standby is kept"),
    "switchover_scheduled": EventKind("a switchover to the standby was planned", webhook="switchover.scheduled"),
    "switchover_cancelled": EventKind("a planned switchover was cancelled", webhook="switchover.cancelled"),
    "switchover_dropped": EventKind("a planned switchover was dropped: the pool was disabled, or rebuilt with no "
                                    "standby", webhook="switchover.dropped"),
    # the replica on another host
    "replica_created": EventKind("a replica volume was made on another host; its first copy starts"),
    "replica_adopted": EventKind("a replica volume an interrupted attempt made was adopted"),
    "replica_ready": EventKind("a copy into the replica landed: it holds the data of that time"),
    "replica_failed": EventKind("making or copying into the replica failed (tried again later), or a copy stuck"),
    "replica_lost": EventKind("the replica volume is offline or gone: a new one follows"),
    "replica_removed": EventKind("the replica volume was deleted (or left to delete by hand): the pool wants none"),
    "old_host_retired": EventKind("after a move to the replica's host, the old host's instances and volume went"),
    "old_host_retire_postponed": EventKind("the old host's instances or volume could not go yet: tried later"),
    # webhooks
    "webhook_disabled": EventKind("a webhook of the tenant answered 410 Gone and was disabled",
                                  webhook="webhook.disabled"),
}

# internal event kind -> the webhook type a subscriber sees
WEBHOOK_TYPES = {name: kind.webhook for name, kind in EVENT_KINDS.items() if kind.webhook}
EVENT_TYPES = sorted(set(WEBHOOK_TYPES.values()))  # what a webhook may subscribe to
TEST_TYPE = "webhook.test"  # sent only by POST /api/v1/webhooks/<id>/test, to that webhook alone
