"""Provisioning steps: find a host, create the volume, the running primary and the stopped standby.

Every step first looks at the pool record, then at the provider (by label or
name) for what an interrupted attempt made, and adopts it instead of creating a
second one (rule 4 in docs/architecture.md). A create whose answer was lost is
resolved before anything is created again (rule 12).
"""

import time
from typing import Literal

from celery import shared_task

from app import runtime
from app import vast as provider
from app.hosts import LASTING_MARGINS, group_hosts, offers_query
from app.operations import DONE, NEXT, WAIT, StepOutcome
from app.pools import (Pool, instance_labels, label, primary_fields, required, standby_gone, standby_stopped, to_active,
                       to_host_found, volume_name)
from app.runtime import Throttled, account, unfenced, without_queueing
from app.store import UNSEEN, FencedOut
from tasks.base import NotYet, Operation, OperationFailed, Step

MOUNT_PATH = "/workspace"
# instance states that do not turn into running by themselves (Vast's docs)
NOT_RUNNING = {"exited", "offline", "unknown", "stopped"}


def is_running(instance: dict | None) -> bool:
    return bool(instance and instance.get("actual_status") == "running"
                and instance.get("ssh_host") and instance.get("ssh_port"))


def create_once(op: Operation, role: str, create, find, destroy) -> int:
    """Create the pool's ``role`` resource, or adopt the one an interrupted attempt made.

    Before a create is sent, the pool record says so (a fenced write): one create in flight per role.
    When the answer of a create was lost (a timeout, a 504, a killed worker), the provider is asked by
    label what it made, again and again over ``CREATE_GRACE`` seconds, before anything is created
    again. A create that returns after this step lost its lock is destroyed, unless the pool adopted it.
    """
    creating = op.pool.get("creating")
    if isinstance(creating, dict) and creating.get("role") == role:
        found = find()
        if found is not None:
            return found
        if time.time() < creating["at"] + op.settings.create_grace:
            raise NotYet(f"the {role} whose create was lost has not shown up yet")
    op.save(creating={"role": role, "at": time.time()})
    try:
        made = create()
    except Throttled:
        op.save(creating=None)  # the create was never sent: nothing to look for next time
        raise
    try:
        op.fence()
    except FencedOut:
        adopted = op.store.get_pool(op.pid) or {}
        if made not in (adopted.get("volume_id"), adopted.get("primary_gpu_id"), adopted.get("standby_gpu_id")):
            with unfenced():
                destroy(made)  # ours alone: nobody else will ever reference it, and it must not bill
        raise
    return made


def adopt(op: Operation, role: str) -> int | None:
    """An instance for ``role`` that an earlier, interrupted attempt created, if there is one."""
    known = {op.pool["primary_gpu_id"], op.pool["standby_gpu_id"]}
    rows = op.vast.labelled(label(op.tenant, op.machine_id, role))
    return next((row["id"] for row in rows if row["id"] not in known), None)


def create_instance(op: Operation, role: str, target_state: str) -> int:
    """Rent one GPU of the pool's host for ``role``, on the pool's volume (adopting a lost one)."""
    return create_once(op, role, lambda: rent(op, role, target_state), lambda: adopt(op, role),
                       op.vast.destroy_instance)


def rent(op: Operation, role: str, target_state: str, tries: int = 2, place: dict | None = None) -> int:
    """Rent one GPU for ``role`` on the pool's host and volume, or on ``place``'s (``host_machine_id``,
    ``volume_id``: a move to the replica's host)."""
    pool = {**op.pool, **(place or {})}

    def search() -> int:
        offers = op.vast.search_offers({**offers_query(pool["gpu_name"], verified=False,
                                                       machine_id=pool["host_machine_id"], num_gpus=1), "limit": 1})
        if not offers:
            raise OperationFailed(f"host {pool['host_machine_id']} has no rentable GPU or volume offer "
                                  f"(for the {role})")
        return offers[0]["id"]

    try:
        return with_offer(op, "gpu_offer", search, lambda offer: op.vast.create_instance(
            offer, image=pool["image"], disk=pool["disk_size"], target_state=target_state,
            label=label(op.tenant, op.machine_id, role), onstart=pool.get("onstart"), env=pool.get("env"),
            volume_info={"create_new": False, "volume_id": pool["volume_id"], "mount_path": MOUNT_PATH}))
    except provider.OfferUnavailable:
        if tries <= 1:
            raise
        return rent(op, role, target_state, tries - 1, place)  # taken meanwhile by another renter: search again


def with_offer(op: Operation, key: Literal["gpu_offer", "volume_offer"], search, create) -> int:
    """Create from an offer a search found. The offer stays in the operation's context (searches
    are rate limited too): a step retried for a slot of the budget, or the standby after the
    primary on the same host, uses it again; only a refused create searches anew."""
    if key not in op.ctx:
        op.ctx[key] = search()
    try:
        return create(op.ctx[key])
    except provider.VastError:
        del op.ctx[key]  # the offer may be gone: search again
        raise


def observe(instance_id: int, interval: float | None = None, since: float = 0.0):
    """An instance as the provider showed it in the last shared poll round (None: gone; UNSEEN: not yet, or
    only before ``since``); a round is due ``interval`` s after the last (default: the poll interval)."""
    def fetch(ids: list[int]) -> dict[int, dict]:
        with without_queueing(pages=-(-len(ids) // provider.LIST_PAGE_ROWS)):  # no slot soon: a later waiter asks
            return {row["id"]: row for row in runtime.vast().list_instances({"id": {"in": ids}}).instances}

    return runtime.store().observe(instance_id, interval or runtime.settings().poll_interval, fetch, since,
                                   account.get())


@shared_task(bind=True, base=Step, name="warmpool.provision.find_host")
def find_host(self, op: Operation) -> StepOutcome:
    """Pick the best host: verified, 2+ free GPUs, rentable for long (rentals end), cheapest, most reliable."""
    op.step("searching")
    pool = op.pool
    hosts = group_hosts(op.vast.search_offers(offers_query(
        pool["gpu_name"], pool["max_price"], min_duration=LASTING_MARGINS * op.settings.expiry_margin)))
    if not hosts:
        raise OperationFailed("no verified host with 2 free GPUs matches")
    best = hosts[0]
    to_host_found(op.pool, best["machine_id"], best["gpu_name"])
    op.save()
    op.event("host_found", f"host {best['machine_id']} picked", host_machine_id=best["machine_id"])
    return NEXT


@shared_task(bind=True, base=Step, name="warmpool.provision.create_volume")
def create_volume(self, op: Operation) -> StepOutcome:
    op.step("create_volume")
    pool = op.pool
    if pool["volume_id"] is None:
        name = volume_name(op.tenant, op.machine_id)

        def search() -> int:
            offers = op.vast.search_volume_offers(
                {"machine_id": {"eq": pool["host_machine_id"]}, "order": [["storage_cost", "asc"]], "limit": 1})
            if not offers:
                raise OperationFailed(f"host {pool['host_machine_id']} has no rentable GPU or volume offer")
            return offers[0]["id"]

        def create() -> int:
            return with_offer(op, "volume_offer", search, lambda offer: op.vast.create_volume(
                offer, pool["volume_size"], name))

        volume_id = create_once(op, "volume", create, lambda: next(
            (v["id"] for v in op.vast.show_volumes() if v.get("label") == name), None), op.vast.delete_volume)
        op.save(volume_id=volume_id, creating=None)
        op.event("volume_created", f"volume {volume_id} on host {pool['host_machine_id']}", volume_id=volume_id)
    return NEXT


@shared_task(bind=True, base=Step, name="warmpool.provision.create_primary")
def create_primary(self, op: Operation) -> StepOutcome:
    op.step("create_primary")
    if op.pool["primary_gpu_id"] is None:
        instance_id = create_instance(op, "primary", "running")
        op.save(primary_gpu_id=instance_id, creating=None)
        op.event("primary_created", f"primary {instance_id} created", primary_gpu_id=instance_id)
    return NEXT


@shared_task(bind=True, base=Step, name="warmpool.provision.await_primary")
def await_primary(self, op: Operation) -> StepOutcome:
    op.step("await_primary")
    primary = required(op.pool, "primary_gpu_id")  # created by create_primary
    instance = observe(primary)
    if instance is UNSEEN:
        instance = {}  # not in a poll round yet
    if is_running(instance):
        op.save(**primary_fields(instance))
        return NEXT
    if instance is None or instance.get("actual_status") in NOT_RUNNING:
        status = instance and instance.get("actual_status")
        raise OperationFailed(f"primary {primary} is {status or 'gone'} instead of running")
    if op.within("primary_deadline", op.settings.instance_ready_timeout):
        return WAIT
    raise OperationFailed(f"primary {primary} not running after {op.settings.instance_ready_timeout:.0f} s")


@shared_task(bind=True, base=Step, name="warmpool.provision.create_standby")
def create_standby(self, op: Operation) -> StepOutcome:
    """Create the stopped standby; the last step of provisioning and of a failover."""
    op.step("create_standby")
    standby = op.pool["standby_gpu_id"]
    if standby is None:
        standby = create_instance(op, "standby", "stopped")
        op.event("standby_created", f"standby {standby} created stopped", standby_gpu_id=standby)
    standby_stopped(op.pool, standby)
    fields: Pool = {"creating": None}
    if "replace_started" in op.ctx:  # the end of a failover
        last = required(op.pool, "last_failover")  # written by the promotion
        fields["last_failover"] = {**last, "phases": {**last["phases"], "replace_standby": round(
            time.time() - op.ctx["replace_started"], 3)}}
        op.event("standby_replaced", f"standby {standby} replaces the promoted one", standby_gpu_id=standby)
    to_active(op.pool, **fields)
    status = {k: op.pool[k] for k in (
        "machine_id", "state", "host_machine_id", "volume_id", "primary_gpu_id", "standby_gpu_id")}
    op.finish({"success": True, "message": "Warm pool provisioned successfully", "status": status})
    return DONE


def undo_provision(op: Operation) -> None:
    """A provision that failed before its primary ran leaves nothing behind; after, it keeps both."""
    pool = op.pool
    if pool["primary_ssh_host"]:
        return
    for row in op.vast.labelled(*instance_labels(op.tenant, op.machine_id)):
        op.vast.destroy_instance(row["id"])
    if pool["volume_id"] is not None:
        op.vast.delete_volume(pool["volume_id"])
    standby_gone(pool)
    op.save(primary_gpu_id=None, volume_id=None, creating=None)
