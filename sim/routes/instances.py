"""The instances' routes: list, show, start/stop, label and destroy, one at a time or in bulk."""

from flask import jsonify, request

from ..errors import ApiError, invalid_args
from .base import SimBlueprint, _int, _json_arg, _object_body, world

bp = SimBlueprint("instances")


def _state(body):
    state = body.get("state")
    if state not in ("running", "stopped"):
        raise invalid_args("state must be 'running' or 'stopped'")
    return state


@bp.vast("/api/v1/instances/", "GET")
def list_instances():
    return jsonify(world.instances.list(
        _json_arg("select_filters"), _json_arg("order_by"), request.args.get("limit"),
        _json_arg("select_cols"), request.args.get("after_token") or None))


@bp.vast("/api/v0/instances/filters/", "GET")
def instance_filters():
    return jsonify(world.instances.filters())


@bp.vast("/api/v0/instances/", "GET")
def legacy_list_instances():
    return jsonify(success=False, error="deprecated_endpoint",
                   msg="/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead."), 410


@bp.vast("/api/v0/instances/", "PUT")
def bulk_set_state():
    body = _object_body()
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids:
        raise invalid_args("ids must be a non-empty list of instance ids")
    return jsonify(world.instances.set_states([_int(i, "instance id") for i in ids], _state(body)))


@bp.vast("/api/v0/instances/", "DELETE")
def bulk_destroy():
    ids = _object_body().get("instance_ids")
    if not isinstance(ids, list) or not ids:
        raise invalid_args("instance_ids must be a non-empty list of instance ids")
    for inst_id in ids:
        world.instances.destroy(_int(inst_id, "instance id"))
    return jsonify(success=True)


@bp.vast("/api/v0/instances/{id}/", "GET")
def show_instance(id):
    return jsonify(instances=world.instances.get(_int(id, "instance id")))


@bp.vast("/api/v0/instances/{id}/", "PUT")
def update_instance(id):
    inst_id = _int(id, "instance id")
    body = _object_body()
    if "state" in body:
        return jsonify(world.instances.set_state(inst_id, _state(body)))
    if "label" in body:
        label = body["label"]
        if label is not None and not isinstance(label, str):
            raise invalid_args("label must be a string")
        if label is not None and len(label) > 256:
            raise ApiError(400, "label_too_long", "Label must be at most 256 characters")
        return jsonify(world.instances.set_label(inst_id, label))
    raise invalid_args("Nothing to update: give 'state' or 'label'")


@bp.vast("/api/v0/instances/{id}/", "DELETE")
def destroy_instance(id):
    return jsonify(world.instances.destroy(_int(id, "instance id")))
