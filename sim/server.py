"""The simulator's Flask app (the Vast.ai subset plus the ``/_sim/`` control routes, one blueprint per resource
in ``sim/routes/``) and the threaded server that runs it."""

import signal
import threading

from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from .housekeeper import Housekeeper
from .persistence import StateFile
from .routes import account, control, gate, instances, offers, volumes
from .world import World

BLUEPRINTS = (gate.bp, account.bp, offers.bp, instances.bp, volumes.bp, control.bp)


def create_app(time_scale=1.0, seed=0, api_key=None, state_file=None) -> Flask:
    """The simulator as a Flask app; ``api_key`` None accepts any non-empty key, each key its own account
    (sim/accounts.py).

    With ``state_file`` (a path) the world is loaded from it if it exists, and saved to it after
    every request that may change the world.
    """
    app = Flask(__name__)
    app.json.sort_keys = False
    app.json.mimetype = "application/json"  # exactly: the vastai CLI rejects a charset suffix
    app.config["SIM_API_KEY"] = api_key
    world = World(seed=seed, time_scale=time_scale)
    app.extensions["sim_world"] = world
    if state_file is not None:
        state_file = StateFile(state_file)
        state_file.load(world)
    app.extensions["sim_state_file"] = state_file
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
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
