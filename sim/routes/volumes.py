"""The volumes' routes: search, create, list, delete, and the copies between volumes (clone, copy, cancel)."""

from flask import jsonify, request

from .base import SimBlueprint, _json_body, _object_body, world

bp = SimBlueprint("volumes")


@bp.vast("/api/v0/volumes/search/", "POST", reads=True)
def search_volumes():
    return jsonify(offers=world.offers.search(_json_body(), volumes=True))


@bp.vast("/api/v0/volumes/", "PUT")
def create_volume():
    return jsonify(world.volumes.create(_json_body()))


@bp.vast("/api/v0/volumes", "GET")
def list_volumes():
    return jsonify(world.volumes.rows())


@bp.vast("/api/v0/volumes/copy/", "POST")
def clone_volume():
    return jsonify(world.copies.clone(_json_body()))


@bp.vast("/api/v0/commands/copy_direct/", "PUT")
def copy_direct():
    return jsonify(world.copies.copy_direct(_object_body()))


@bp.vast("/api/v0/commands/copy_direct/", "DELETE")
def cancel_copy():
    return jsonify(world.copies.cancel(_object_body()))


@bp.vast("/api/v0/volumes/", "DELETE")
def delete_volume():
    # the CLI sends ?id=, the docs put it in the body
    raw = request.args.get("id")
    if raw is None:
        raw = _object_body().get("id")
    try:
        vid = int(raw) if isinstance(raw, str) else raw
    except ValueError:
        vid = raw
    return jsonify(world.volumes.delete(vid))
