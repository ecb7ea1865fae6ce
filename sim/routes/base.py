"""What the route modules share: a blueprint that records each route as ``/_sim/stats`` and ``/_sim/faults``
name it, the world of the app serving the request, and reading a request's arguments.

The helpers keep the leading underscore they had as closures of ``create_app``: they are for this package's
route modules only.
"""

import json

from flask import Blueprint, current_app, request
from werkzeug.local import LocalProxy

from ..errors import invalid_args, invalid_json

# the World of the app serving the request (create_app puts it in app.extensions), so a route reads `world.`
world = LocalProxy(lambda: current_app.extensions["sim_world"])

# filled as the route modules are imported: route name ("METHOD /template/", as counted in /_sim/stats) -> needs
# auth, for the Vast routes; and the route names (Vast and control) that may change the world
vast_routes: dict[str, bool] = {}
writes: set[str] = set()


def route_name(endpoint):
    """The route's name in ``vast_routes`` and ``writes``: its Flask endpoint without the blueprint's prefix
    (Flask names a blueprint's endpoint "<blueprint>.<name>"); None (no route matched) stays None."""
    return endpoint and endpoint.partition(".")[2]


class SimBlueprint(Blueprint):
    """A blueprint whose routes are registered under the names the simulator counts and faults them by."""

    def __init__(self, name):
        super().__init__(name, __name__)

    def vast(self, template, method, auth=True, reads=None):
        """Register a Vast route; accepts the path with and without its trailing slash."""
        def register(view):
            rule = template.replace("{id}", "<id>").rstrip("/") + "/"
            endpoint = f"{method} {template}"
            self.add_url_rule(rule, endpoint, view, methods=[method], strict_slashes=False)
            vast_routes[endpoint] = auth
            if not (method == "GET" if reads is None else reads):
                writes.add(endpoint)
            return view
        return register

    def control(self, rule, method="POST"):
        """Register a ``/_sim/`` control route: no key, no faults, not counted."""
        def register(view):
            endpoint = f"sim {method} {rule}"
            self.add_url_rule(rule, endpoint, view, methods=[method], strict_slashes=False)
            if method != "GET":
                writes.add(endpoint)
            return view
        return register


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

