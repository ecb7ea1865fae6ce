"""The OpenAPI document at /api/v1/openapi.json describes every route the app serves, with its codes.

Expectations come from ``app.url_map``: a route added without documentation, or one missing from
the table of codes below, fails here.
"""

import re

import pytest

from app import create_app

DOC_ENDPOINTS = {"api-docs.openapi_json", "api-docs.openapi_swagger_ui", "api-docs.openapi_redoc",
                 "api-docs.openapi_rapidoc", "static", "swagger_ui.static"}
IGNORED_METHODS = {"HEAD", "OPTIONS"}

# what design.md's API contract says each route answers (401 is checked separately, for every route)
CODES = {
    ("GET", "/api/v1/warmpool/status/{machine_id}"): {"200", "404"},
    ("GET", "/api/v1/warmpool/pools"): {"200"},
    ("GET", "/api/v1/warmpool/events/{machine_id}"): {"200", "404"},
    ("GET", "/api/v1/warmpool/hosts"): {"200", "422", "503"},
    ("POST", "/api/v1/warmpool/provision"): {"202", "200", "409", "422"},
    ("POST", "/api/v1/warmpool/enable/{machine_id}"): {"202", "200", "409", "422"},
    ("POST", "/api/v1/warmpool/disable/{machine_id}"): {"200", "404"},
    ("POST", "/api/v1/warmpool/failover/test/{machine_id}"): {"202", "200", "404", "409", "422"},
    ("DELETE", "/api/v1/warmpool/cleanup/{machine_id}"): {"202", "200", "404", "422"},
    ("POST", "/api/v1/warmpool/switchover/{machine_id}"): {"200", "404", "409", "422"},
    ("DELETE", "/api/v1/warmpool/switchover/{machine_id}"): {"200", "404", "409"},
    ("GET", "/api/v1/tasks/{task_id}"): {"200", "404"},
    ("GET", "/api/v1/webhooks"): {"200"},
    ("POST", "/api/v1/webhooks"): {"201", "409", "422"},
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): {"204", "404"},
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): {"200", "404"},
    ("PATCH", "/api/v1/webhooks/{webhook_id}"): {"200", "404", "422"},
    ("POST", "/api/v1/webhooks/{webhook_id}/test"): {"202", "404", "409"},
    ("POST", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend"): {"202", "404", "409"},
    ("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret"): {"200", "404"},
    ("POST", "/api/v1/provider/notifications"): {"200", "401", "404", "422"},
    ("POST", "/api/v1/provider/notifications/{account}"): {"200", "401", "404", "422"},
}
# signed by Vast with a shared secret instead of an API key (404 while no secret is configured)
SIGNED = {("POST", "/api/v1/provider/notifications"), ("POST", "/api/v1/provider/notifications/{account}")}
ACCEPTED = {key for key, codes in CODES.items() if "202" in codes}
SAMPLE = {"account": "0123456789ab", "machine_id": "123", "task_id": "a" * 32, "webhook_id": "wh_" + "a" * 32, "delivery_id": "msg_" + "a" * 32}


@pytest.fixture(scope="module")
def app():
    return create_app()


@pytest.fixture(scope="module")
def spec(app):
    rv = app.test_client().get("/api/v1/openapi.json")
    assert rv.status_code == 200 and rv.is_json
    return rv.json


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def api_routes(app) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route under /api/v1, except the spec and docs themselves."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and rule.endpoint not in DOC_ENDPOINTS:
            routes |= {(m, openapi_path(rule.rule)) for m in rule.methods - IGNORED_METHODS}
    return routes


def operation(spec, method, path):
    return spec["paths"][path][method.lower()]


def resolve(spec, obj):
    while "$ref" in obj:
        section, name = obj["$ref"].split("/")[-2:]
        obj = spec["components"][section][name]
    return obj


def test_the_route_table_is_the_apps():
    routes = api_routes(create_app())
    assert routes, "no /api/v1 routes found"
    assert routes == set(CODES), "a route was added or removed: document it and add it to CODES"


def test_every_route_is_in_the_spec_with_its_method(app, spec):
    missing = [(m, p) for m, p in sorted(api_routes(app))
               if p not in spec["paths"] or m.lower() not in spec["paths"][p]]
    assert missing == []


def test_the_spec_documents_no_route_the_app_lacks(app, spec):
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if m != "parameters"}
    assert documented <= api_routes(app)


def test_path_parameters_are_documented(app, spec):
    for method, path in api_routes(app):
        names = set(re.findall(r"{([^}]+)}", path))
        params = spec["paths"][path].get("parameters", []) + operation(spec, method, path).get("parameters", [])
        assert names == {p["name"] for p in params if p["in"] == "path"}, (method, path)


@pytest.mark.parametrize("method, path", sorted(CODES))
def test_documented_response_codes(spec, method, path):
    responses = operation(spec, method, path)["responses"]
    assert CODES[(method, path)] <= set(responses), (method, path, sorted(responses))


@pytest.mark.parametrize("method, path", sorted(ACCEPTED))
def test_accepted_operations_document_the_location_header(spec, method, path):
    accepted = resolve(spec, operation(spec, method, path)["responses"]["202"])
    assert "Location" in accepted.get("headers", {}), (method, path)
    assert resolve(spec, accepted["headers"]["Location"])["schema"]["type"] == "string"


def test_error_responses_have_the_error_shape(spec):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            for code, response in op["responses"].items():
                if code[0] in "45":
                    schema = resolve(spec, resolve(spec, response)["content"]["application/json"]["schema"])
                    assert {"code", "status", "message", "errors"} <= set(schema["properties"]), (method, path, code)


def test_the_bearer_security_scheme_exists(spec):
    schemes = spec["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"].lower() == "bearer" for s in schemes.values())


def authed_routes(app, env):
    """The routes that answer 401 to a request without a key (found by asking each one)."""
    found = set()
    for method, path in api_routes(app):
        url = path.format(**SAMPLE)
        if env.client.open(url, method=method).status_code == 401:
            found.add((method, path))
    return found


def test_every_warmpool_and_tasks_route_asks_for_a_key(app, env):
    assert authed_routes(app, env) == set(CODES) - SIGNED


def bearer_names(spec):
    return {name for name, s in spec["components"]["securitySchemes"].items() if s.get("scheme") == "bearer"}


def test_routes_that_ask_for_a_key_declare_bearer_security(app, spec, env):
    names = bearer_names(spec)
    for method, path in sorted(authed_routes(app, env)):
        security = operation(spec, method, path).get("security", spec.get("security", []))
        assert any(set(req) & names for req in security), (method, path)


def test_routes_that_ask_for_a_key_document_401(app, spec, env):
    undocumented = [(m, p) for m, p in sorted(authed_routes(app, env))
                    if "401" not in operation(spec, m, p)["responses"]]
    assert undocumented == []


def test_swagger_ui_is_served(app):
    rv = app.test_client().get("/api/v1/docs")
    assert rv.status_code == 200 and b"swagger" in rv.data.lower()
