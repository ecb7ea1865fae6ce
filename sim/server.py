"""HTTP routes of the simulator: the Vast.ai subset plus the ``/_sim/`` control routes."""

import hmac
import json
import logging
import signal
import threading
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler, make_server

from . import accounts
from .errors import ApiError, invalid_args, invalid_json
from .housekeeper import Housekeeper
from .persistence import StateFile
from .world import World

log = logging.getLogger(__name__)

# what a gateway in front of the API answers when the API behind it took too long
GATEWAY_TIMEOUT_PAGE = ("<html><head><title>504 Gateway Time-out</title></head>"
                        "<body><h1>504 Gateway Time-out</h1></body></html>")

USER = {
    "id": 1, "username": "simulator", "email": "sim@example.com", "fullname": "Vast Simulator",
    "credit": 1000.0, "balance": 1000.0, "can_pay": True, "has_billing": True,
    "host_agreement_accepted": False, "is_host": False, "ssh_key": None,
}


def _json_body():
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}  # the CLI sends "{}" but other clients may send nothing
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid_json() from None


def _object_body():
    body = _json_body()
    if not isinstance(body, dict):
        raise invalid_json()
    return body


def _json_arg(name):
    """A query parameter holding JSON (the CLI json.dumps every non-string value)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid_args(f"{name} is not valid JSON") from None


def _int(value, what):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise invalid_args(f"Invalid {what} {value!r}") from None


def _state(body):
    state = body.get("state")
    if state not in ("running", "stopped"):
        raise invalid_args("state must be 'running' or 'stopped'")
    return state


def create_app(time_scale=1.0, seed=0, api_key=None, state_file=None) -> Flask:
    """The simulator as a Flask app; ``api_key`` None accepts any non-empty key, each key its own account
    (sim/accounts.py).

    With ``state_file`` (a path) the world is loaded from it if it exists, and saved to it after
    every request that may change the world.
    """
    app = Flask(__name__)
    app.json.sort_keys = False
    app.json.mimetype = "application/json"  # exactly: the vastai CLI rejects a charset suffix
    world = World(seed=seed, time_scale=time_scale)
    app.extensions["sim_world"] = world
    if state_file is not None:
        state_file = StateFile(state_file)
        state_file.load(world)
    app.extensions["sim_state_file"] = state_file
    # endpoint ("METHOD /template/", as counted in /_sim/stats) -> needs auth
    vast_routes = {}
    writes = set()  # endpoints that may change the world

    def vast(template, method, auth=True, reads=None):
        """Register a Vast route; accepts the path with and without its trailing slash."""
        def register(view):
            rule = template.replace("{id}", "<id>").rstrip("/") + "/"
            endpoint = f"{method} {template}"
            app.add_url_rule(rule, endpoint, view, methods=[method], strict_slashes=False)
            vast_routes[endpoint] = auth
            if not (method == "GET" if reads is None else reads):
                writes.add(endpoint)
            return view
        return register

    def sim(rule, method="POST"):
        def register(view):
            endpoint = f"sim {method} {rule}"
            app.add_url_rule(rule, endpoint, view, methods=[method], strict_slashes=False)
            if method != "GET":
                writes.add(endpoint)
            return view
        return register

    @app.before_request
    def gate():
        g.changed = world.tick()
        accounts.current.set(None)  # a thread may serve several requests: none inherits an account
        auth = vast_routes.get(request.endpoint)
        if auth is None:
            return None  # control routes and unknown paths: no faults, no counting, every account seen
        key = _key()
        account = accounts.account_of(key) if key else None
        verdict = world.faults.admit(request.endpoint, world.clock.now(), account)
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

    @app.after_request
    def deliver(response):
        """Save the world first; then a held answer waits in this request's own thread, and a lost
        one becomes a gateway's 504."""
        if state_file is not None and (g.pop("changed", False) or request.endpoint in writes):
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
        return api_key is None or hmac.compare_digest(key.encode(), api_key.encode())

    @app.errorhandler(ApiError)
    def api_error(e):
        return jsonify(e.body), e.status

    @app.errorhandler(HTTPException)
    def http_error(e):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.code, "bad_request")
        return jsonify(success=False, error=code, msg=e.description), e.code

    @app.errorhandler(Exception)
    def unexpected(e):
        log.exception("simulator bug")
        return jsonify(success=False, error="server_error", msg="Internal server error"), 500

    # ---- account ---------------------------------------------------------------------------

    @vast("/api/v0/gpu_names/unique/", "GET", auth=False)
    def gpu_names():
        return jsonify(world.gpu_names())

    @vast("/api/v0/users/current", "GET")
    def current_user():
        return jsonify(USER)

    # ---- offers ----------------------------------------------------------------------------

    @vast("/api/v0/bundles/", "POST", reads=True)
    def search_bundles():
        return jsonify(offers=world.offers.search(_json_body()))

    @vast("/api/v0/bundles/", "GET")
    def search_bundles_get():
        return jsonify(offers=world.offers.search(_json_arg("q") or {}))

    @vast("/api/v0/search/asks/", "PUT", reads=True)
    def search_asks():
        return jsonify(offers=world.offers.search(_object_body().get("q") or {}))

    @vast("/api/v0/asks/{id}/", "PUT")
    def create_instance(id):
        return jsonify(world.instances.create(_int(id, "offer id"), _json_body()))

    # ---- instances -------------------------------------------------------------------------

    @vast("/api/v1/instances/", "GET")
    def list_instances():
        return jsonify(world.instances.list(
            _json_arg("select_filters"), _json_arg("order_by"), request.args.get("limit"),
            _json_arg("select_cols"), request.args.get("after_token") or None))

    @vast("/api/v0/instances/filters/", "GET")
    def instance_filters():
        return jsonify(world.instances.filters())

    @vast("/api/v0/instances/", "GET")
    def legacy_list_instances():
        return jsonify(success=False, error="deprecated_endpoint",
                       msg="/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead."), 410

    @vast("/api/v0/instances/", "PUT")
    def bulk_set_state():
        body = _object_body()
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids:
            raise invalid_args("ids must be a non-empty list of instance ids")
        return jsonify(world.instances.set_states([_int(i, "instance id") for i in ids], _state(body)))

    @vast("/api/v0/instances/", "DELETE")
    def bulk_destroy():
        ids = _object_body().get("instance_ids")
        if not isinstance(ids, list) or not ids:
            raise invalid_args("instance_ids must be a non-empty list of instance ids")
        for inst_id in ids:
            world.instances.destroy(_int(inst_id, "instance id"))
        return jsonify(success=True)

    @vast("/api/v0/instances/{id}/", "GET")
    def show_instance(id):
        return jsonify(instances=world.instances.get(_int(id, "instance id")))

    @vast("/api/v0/instances/{id}/", "PUT")
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

    @vast("/api/v0/instances/{id}/", "DELETE")
    def destroy_instance(id):
        return jsonify(world.instances.destroy(_int(id, "instance id")))

    # ---- volumes ---------------------------------------------------------------------------

    @vast("/api/v0/volumes/search/", "POST", reads=True)
    def search_volumes():
        return jsonify(offers=world.offers.search(_json_body(), volumes=True))

    @vast("/api/v0/volumes/", "PUT")
    def create_volume():
        return jsonify(world.volumes.create(_json_body()))

    @vast("/api/v0/volumes", "GET")
    def list_volumes():
        return jsonify(world.volumes.rows())

    @vast("/api/v0/volumes/copy/", "POST")
    def clone_volume():
        return jsonify(world.copies.clone(_json_body()))

    @vast("/api/v0/commands/copy_direct/", "PUT")
    def copy_direct():
        return jsonify(world.copies.copy_direct(_object_body()))

    @vast("/api/v0/commands/copy_direct/", "DELETE")
    def cancel_copy():
        return jsonify(world.copies.cancel(_object_body()))

    @vast("/api/v0/volumes/", "DELETE")
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

    # ---- control routes (not part of the Vast API) -----------------------------------------

    @sim("/_sim/instances/<id>/fail")
    def fail_instance(id):
        return jsonify(world.instances.fail(_int(id, "instance id")))

    @sim("/_sim/instances/<id>/end_date")
    def set_end_date(id):
        return jsonify(world.instances.set_end_date(_int(id, "instance id"), _object_body()))

    @sim("/_sim/volumes/<id>/write")
    def write_volume(id):
        return jsonify(world.volumes.write(_int(id, "volume id")))

    @sim("/_sim/hosts/<machine_id>/fail")
    def fail_host(machine_id):
        return jsonify(world.fail_host(_int(machine_id, "machine id")))

    @sim("/_sim/hosts/<machine_id>/rent_out")
    def rent_out_host(machine_id):
        return jsonify(world.rent_out_host(_int(machine_id, "machine id")))

    @sim("/_sim/hosts/<machine_id>/restore")
    def restore_host(machine_id):
        return jsonify(world.restore_host(_int(machine_id, "machine id")))

    @sim("/_sim/faults")
    def set_faults():
        return jsonify(world.faults.set_faults(_object_body(), vast_routes))

    @sim("/_sim/faults", "GET")
    def active_faults():
        return jsonify(world.faults.active())

    @sim("/_sim/rate_limits")
    def set_rate_limits():
        return jsonify(world.faults.set_route_intervals(_object_body()))

    @sim("/_sim/webhooks")
    def register_webhook():
        return jsonify(world.webhooks.register(_object_body()))

    @sim("/_sim/webhooks", "GET")
    def webhooks():
        return jsonify(world.webhooks.view())

    @sim("/_sim/webhooks", "DELETE")
    def clear_webhooks():
        world.webhooks.clear()
        return jsonify(world.webhooks.view())

    @sim("/_sim/ledger", "GET")
    def ledger():
        return jsonify(world.ledger())

    @sim("/_sim/stats", "GET")
    def stats():
        return jsonify(world.stats())

    @sim("/_sim/config", "GET")
    def config():
        return jsonify(world.config())

    @sim("/_sim/reset")
    def reset():
        world.reset()
        return jsonify(success=True)

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code="-", size="-"):
        pass  # a busy client would flood the terminal


def _make_server(host, port, **options):
    """A threaded server (a held answer must not block other requests) and its housekeeper."""
    app = create_app(**options)
    server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
    return server, Housekeeper(app.extensions["sim_world"], app.extensions["sim_state_file"])


def _stop_on_sigterm(*_):
    raise SystemExit(0)  # unwinds through serve()'s finally: the last save


def serve(host="127.0.0.1", port=8090, time_scale=1.0, seed=0, api_key=None, state_file=None):
    """Run the simulator until interrupted (Ctrl-C or SIGTERM)."""
    server, housekeeper = _make_server(host, port, time_scale=time_scale, seed=seed, api_key=api_key,
                                       state_file=state_file)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    housekeeper.start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        housekeeper.stop()
        server.server_close()


def start_in_thread(port=0, time_scale=1.0, seed=0, api_key=None, state_file=None):
    """Start the simulator in a daemon thread; returns (server, base_url). Stop with server.shutdown()."""
    server, housekeeper = _make_server("127.0.0.1", port, time_scale=time_scale, seed=seed, api_key=api_key,
                                       state_file=state_file)

    def run():
        housekeeper.start()
        try:
            server.serve_forever()
        finally:
            housekeeper.stop()

    threading.Thread(target=run, name="vast-sim", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"
