"""The webhook resource: a tenant's subscriptions to pool events, and their recent deliveries."""

from flask import g
from flask.views import MethodView
from flask_smorest import abort
from marshmallow import Schema, fields, validate

from app.api import Blueprint
from app.api.auth import authenticate
from app.runtime import store
from app.store.webhooks import EVENT_TYPES, MAX_WEBHOOKS, TooManyWebhooks
from tasks.webhooks import UnsafeDestination, check_destination

blp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhooks",
                description="Signed notifications of pool events (Standard Webhooks).")
blp.before_request(authenticate)

WEBHOOK = "<string(length=35):webhook_id>"  # wh_ and 32 hex digits


class WebhookCreateSchema(Schema):
    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False,
                     validate=validate.Length(max=2048), metadata={"example": "https://example.com/hooks/warmpool"})
    events = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), load_default=None, allow_none=True,
                         validate=validate.Length(min=1, max=len(EVENT_TYPES)),
                         metadata={"description": "event types to send; leave out (or null) for all"})


class WebhookSchema(Schema):
    id = fields.String()
    url = fields.String()
    events = fields.List(fields.String(metadata={"enum": EVENT_TYPES}), allow_none=True,
                         metadata={"description": "null: every event type"})
    created_at = fields.String()


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(metadata={"description": "whsec_...: verifies the deliveries' signatures. "
                                                    "Shown only in this answer."})


class WebhookListSchema(Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema))
    count = fields.Integer()


class DeliveryAttemptSchema(Schema):
    attempt = fields.Integer()
    at = fields.String()
    status_code = fields.Integer(allow_none=True, metadata={"description": "null: no answer"})
    error = fields.String(allow_none=True, metadata={"description": "null: a 2xx answer"})
    duration_ms = fields.Float()


class DeliverySchema(Schema):
    id = fields.String(metadata={"description": "the webhook-id header, the same on every attempt"})
    type = fields.String(metadata={"enum": EVENT_TYPES})
    machine_id = fields.Integer()
    state = fields.String(metadata={"enum": ["pending", "delivered", "failed"]})
    created_at = fields.String()
    attempts = fields.List(fields.Nested(DeliveryAttemptSchema))


class DeliveryListSchema(Schema):
    webhook_id = fields.String()
    deliveries = fields.List(fields.Nested(DeliverySchema))
    count = fields.Integer()


def get_webhook(webhook_id: str) -> dict:
    hook = store().get_webhook(g.tenant, webhook_id)
    if hook is None:
        abort(404, message=f"No webhook {webhook_id}")
    return hook


@blp.route("")
class Webhooks(MethodView):
    @blp.response(200, WebhookListSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    def get(self):
        """This tenant's webhooks (their secrets are never shown again)"""
        hooks = store().webhooks(g.tenant)
        return {"webhooks": hooks, "count": len(hooks)}

    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookCreatedSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(409, response="DEFAULT_ERROR")
    def post(self, spec):
        """Subscribe a URL to pool events; the answer holds the signing secret, once"""
        try:
            check_destination(spec["url"])
        except UnsafeDestination as exc:
            abort(422, message="The webhook URL is not allowed", errors={"json": {"url": [str(exc)]}})
        events = sorted(set(spec["events"])) if spec["events"] else None
        try:
            return store().add_webhook(g.tenant, spec["url"], events)
        except TooManyWebhooks:
            abort(409, message=f"At most {MAX_WEBHOOKS} webhooks per tenant; delete one first")


@blp.route("/" + WEBHOOK)
class WebhookById(MethodView):
    @blp.response(204)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def delete(self, webhook_id):
        """Unsubscribe; deliveries not yet made are dropped"""
        if not store().delete_webhook(g.tenant, webhook_id):
            abort(404, message=f"No webhook {webhook_id}")


@blp.route("/" + WEBHOOK + "/deliveries")
class Deliveries(MethodView):
    @blp.response(200, DeliveryListSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def get(self, webhook_id):
        """A webhook's recent deliveries, newest first, with every attempt"""
        get_webhook(webhook_id)
        deliveries = store().deliveries(webhook_id)
        return {"webhook_id": webhook_id, "deliveries": deliveries, "count": len(deliveries)}
