"""The account's routes: GPU names and the current user."""

from flask import jsonify

from .base import SimBlueprint, world

USER = {
    "id": 1, "username": "simulator", "email": "sim@example.com", "fullname": "Vast Simulator",
    "credit": 1000.0, "balance": 1000.0, "can_pay": True, "has_billing": True,
    "host_agreement_accepted": False, "is_host": False, "ssh_key": None,
}

bp = SimBlueprint("account")


@bp.vast("/api/v0/gpu_names/unique/", "GET", auth=False)
def gpu_names():
    return jsonify(world.gpu_names())


@bp.vast("/api/v0/users/current", "GET")
def current_user():
    return jsonify(USER)
