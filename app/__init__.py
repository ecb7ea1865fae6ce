"""warmpool: a warm pool of GPUs on Vast.ai, with automatic failover.

The web app is thin: it validates, authorizes, reads state from Redis or
enqueues work for the Celery workers in ``tasks/``, and answers.
"""

import redis
import swagger_ui_bundle
from flask import Blueprint, Flask, request
from werkzeug.exceptions import MethodNotAllowed, NotFound, RequestEntityTooLarge

from app.api import api

# Swagger UI's files, served from the swagger-ui-bundle package: the docs need no CDN and work offline
SWAGGER_UI_ASSETS = "/api/v1/docs/assets"


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        API_TITLE="warmpool",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=f"{SWAGGER_UI_ASSETS}/",
        API_SPEC_OPTIONS={
            "info": {"description": "GPU warm pool: a running primary and a stopped standby on one "
                                    "Vast.ai host, sharing a volume. A failover takes 1.27 x "
                                    "Vast's own start of the stopped standby: 12.7 s from the failure "
                                    "to the promoted standby at Vast-like delays (median, "
                                    "docs/benchmarks.md)."},
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearerAuth": []}],
        },
    )
    app.config.from_mapping(config or {})

    from app import dashboard, runtime
    from app.api import probes, provider, tasks, warmpool, webhooks

    if "MAX_CONTENT_LENGTH" not in (config or {}):  # Flask's own: 413 from the Content-Length, before any read
        # read (and so validated) at start: a bad setting, or the placeholder key, stops the web process at once
        app.config["MAX_CONTENT_LENGTH"] = runtime.settings().max_content_length

    api.init_app(app)
    api.register_blueprint(warmpool.blp)
    api.register_blueprint(tasks.blp)
    api.register_blueprint(webhooks.blp)
    api.register_blueprint(provider.blp)
    app.register_blueprint(probes.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(Blueprint("swagger_ui", __name__, static_folder=swagger_ui_bundle.swagger_ui_path,
                                     static_url_path=SWAGGER_UI_ASSETS))
    for rule in app.url_map.iter_rules("api-docs.openapi_swagger_ui"):
        rule.strict_slashes = False  # /api/v1/docs/ shows the docs too

    @app.errorhandler(MethodNotAllowed)
    def method_not_allowed(exc):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        return {"code": 405, "status": "Method Not Allowed", "message": f"Allowed methods: {allowed}"}, \
            405, {"Allow": allowed}

    @app.errorhandler(NotFound)
    def not_found(exc):
        if request.url_rule is not None:  # a route's own 404 (abort(404, message=...)): flask-smorest's answer
            return api.handle_http_exception(exc)
        return {"code": 404, "status": "Not Found",
                "message": "Nothing at this URL; the routes are listed at /api/v1/docs"}, 404

    @app.before_request
    def refuse_large_bodies():
        # Flask checks MAX_CONTENT_LENGTH only when a view reads the body: a route that never reads it refuses too
        limit = app.config["MAX_CONTENT_LENGTH"]
        if limit is not None and (request.content_length or 0) > limit:
            raise RequestEntityTooLarge()

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        limit = app.config["MAX_CONTENT_LENGTH"]
        return {"code": 413, "status": "Request Entity Too Large",
                "message": f"The body is larger than {limit} bytes (MAX_CONTENT_LENGTH)"}, 413

    @app.errorhandler(redis.RedisError)
    def state_store_unavailable(exc):
        # Redis restarting or unreachable: say so, in the API's error shape, and let the client retry
        return {"code": 503, "status": "Service Unavailable",
                "message": "The state store is unavailable; retry shortly"}, 503, {"Retry-After": "1"}

    return app
