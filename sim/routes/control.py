"""The ``/_sim/`` control routes (not part of the Vast API): break things, and see what really happened."""

from flask import jsonify

from .base import SimBlueprint, _int, _object_body, vast_routes, world

bp = SimBlueprint("control")


@bp.control("/_sim/instances/<id>/fail")
def fail_instance(id):
    return jsonify(world.instances.fail(_int(id, "instance id")))


@bp.control("/_sim/instances/<id>/end_date")
def set_end_date(id):
    return jsonify(world.instances.set_end_date(_int(id, "instance id"), _object_body()))


@bp.control("/_sim/volumes/<id>/write")
def write_volume(id):
    return jsonify(world.volumes.write(_int(id, "volume id")))


@bp.control("/_sim/hosts/<machine_id>/fail")
def fail_host(machine_id):
    return jsonify(world.fail_host(_int(machine_id, "machine id")))


@bp.control("/_sim/hosts/<machine_id>/rent_out")
def rent_out_host(machine_id):
    return jsonify(world.rent_out_host(_int(machine_id, "machine id")))


@bp.control("/_sim/hosts/<machine_id>/restore")
def restore_host(machine_id):
    return jsonify(world.restore_host(_int(machine_id, "machine id")))


@bp.control("/_sim/faults")
def set_faults():
    return jsonify(world.faults.set_faults(_object_body(), vast_routes))


@bp.control("/_sim/faults", "GET")
def active_faults():
    return jsonify(world.faults.active())


@bp.control("/_sim/rate_limits")
def set_rate_limits():
    return jsonify(world.faults.set_route_intervals(_object_body()))


@bp.control("/_sim/webhooks")
def register_webhook():
    return jsonify(world.webhooks.register(_object_body()))


@bp.control("/_sim/webhooks", "GET")
def webhooks():
    return jsonify(world.webhooks.view())


@bp.control("/_sim/webhooks", "DELETE")
def clear_webhooks():
    world.webhooks.clear()
    return jsonify(world.webhooks.view())


@bp.control("/_sim/ledger", "GET")
def ledger():
    return jsonify(world.ledger())


@bp.control("/_sim/stats", "GET")
def stats():
    return jsonify(world.stats())


@bp.control("/_sim/config", "GET")
def config():
    return jsonify(world.config())


@bp.control("/_sim/reset")
def reset():
    world.reset()
    return jsonify(success=True)
