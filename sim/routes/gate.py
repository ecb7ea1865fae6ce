"""What every request passes: the clock's tick, the caller's account, injected faults and rate limits, the
key; after it, the save of a changed world and a held or lost answer; and the errors' Vast-shaped bodies."""

import hmac
import logging
import time

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import accounts
from ..errors import ApiError
from .base import route_name, vast_routes, world, writes

log = logging.getLogger(__name__)

# what a gateway in front of the API answers when the API behind it took too long
GATEWAY_TIMEOUT_PAGE = ("<html><head><title>504 Gateway Time-out</title></head>"
                        "<body><h1>504 Gateway Time-out</h1></body></html>")

bp = Blueprint("gate", __name__)


@bp.before_app_request
def gate():
    g.changed = world.tick()
    accounts.current.set(None)  # a thread may serve several requests: none inherits an account
    route = route_name(request.endpoint)
    auth = vast_routes.get(route)
    if auth is None:
        return None  # control routes and unknown paths: no faults, no counting, every account seen
    key = _key()
    account = accounts.account_of(key) if key else None
    verdict = world.faults.admit(route, world.clock.now(), account)
    if verdict.latency:
        time.sleep(verdict.latency)
    if verdict.reject is not None:
        kind, threshold = verdict.reject
        if kind == "threshold":
            return Response(f"API requests too frequent endpoint threshold={threshold}", 429,
                            mimetype="text/plain")
        if kind == "rate_limited":
            return Response("API requests too frequent", 429, mimetype="text/plain",
                            headers={"Retry-After": "1"})
        return jsonify(success=False, error="service_unavailable",
                       msg="Service temporarily unavailable (injected fault)"), 503
    g.verdict = verdict
    if auth and not _authorized(key):
        return jsonify(success=False, error="auth_error", msg="Invalid user key"), 401
    accounts.current.set(account or "")  # an unauthenticated route sees no account's resources
    return None


@bp.after_app_request
def deliver(response):
    """Save the world first; then a held answer waits in this request's own thread, and a lost
    one becomes a gateway's 504."""
    state_file = current_app.extensions["sim_state_file"]
    if state_file is not None and (g.pop("changed", False) or route_name(request.endpoint) in writes):
        state_file.save(world)
    verdict = g.pop("verdict", None)
    if verdict is None:
        return response
    if verdict.hold:
        time.sleep(verdict.hold)
    if verdict.lose_answer:
        return Response(GATEWAY_TIMEOUT_PAGE, 504, mimetype="text/html")
    return response


def _key():
    header = request.headers.get("Authorization", "")
    return header[len("Bearer "):].strip() if header.startswith("Bearer ") else request.args.get("api_key", "")


def _authorized(key):
    if not key:
        return False
    api_key = current_app.config["SIM_API_KEY"]
    return api_key is None or hmac.compare_digest(key.encode(), api_key.encode())


@bp.app_errorhandler(ApiError)
def api_error(e):
    return jsonify(e.body), e.status


@bp.app_errorhandler(HTTPException)
def http_error(e):
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.code, "bad_request")
    return jsonify(success=False, error=code, msg=e.description), e.code


@bp.app_errorhandler(Exception)
def unexpected(e):
    log.exception("simulator bug")
    return jsonify(success=False, error="server_error", msg="Internal server error"), 500
