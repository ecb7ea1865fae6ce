"""The offers' routes: the three forms of a GPU offer search, and renting an offer (which creates an instance)."""

from flask import jsonify

from .base import SimBlueprint, _int, _json_arg, _json_body, _object_body, world

bp = SimBlueprint("offers")


@bp.vast("/api/v0/bundles/", "POST", reads=True)
def search_bundles():
    return jsonify(offers=world.offers.search(_json_body()))


@bp.vast("/api/v0/bundles/", "GET")
def search_bundles_get():
    return jsonify(offers=world.offers.search(_json_arg("q") or {}))


@bp.vast("/api/v0/search/asks/", "PUT", reads=True)
def search_asks():
    return jsonify(offers=world.offers.search(_object_body().get("q") or {}))


@bp.vast("/api/v0/asks/{id}/", "PUT")
def create_instance(id):
    return jsonify(world.instances.create(_int(id, "offer id"), _json_body()))
