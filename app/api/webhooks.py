"""The webhook resource: a tenant's subscriptions to pool events, and their recent deliveries; a test
event, a resend, a secret rotation and a change of a subscription."""

from flask import g, url_for
from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app import runtime
from app.api import Blueprint, abort
from app.api.auth import authenticate
from app.events import EVENT_TYPES, TEST_TYPE
from app.store.webhooks import (ATTEMPTS_KEPT, MAX_WEBHOOKS, PREVIOUS_SECRET_SECONDS, DeliveryGone, TooManyPending,
                                TooManyWebhooks)
from app.urls import UnsafeDestination, check_url

blp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhooks",
                description="Signed notifications of pool events (Standard Webhooks).")
blp.before_request(authenticate)

WEBHOOK = "<string(length=35):webhook_id>"  # wh_ and 32 hex digits
DELIVERY = "<string(length=36):delivery_id>"  # msg_ and 32 hex digits
LOCATION = {"Location": {"description": "the webhook's deliveries, to follow this one",
                         "schema": {"type": "string"}}}


def url_field(**kwargs) -> fields.Url:
    return fields.Url(schemes={"http", "https"}, require_tld=False, validate=validate.Length(max=2048),
                      metadata={"example": "https://example.com/hooks/warmpool"}, **kwargs)


def events_field(**kwargs) -> fields.List:
    return fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), allow_none=True,
                       validate=validate.Length(min=1, max=len(EVENT_TYPES)),
                       metadata={"description": "event types to send; null for all"}, **kwargs)


class WebhookCreateSchema(Schema):
    url = url_field(required=True)
    events = events_field(load_default=None)


class WebhookPatchSchema(Schema):
    url = url_field()
    events = events_field()
    enabled = fields.Boolean(metadata={"description": "false: no deliveries; true: deliveries again "
                                                      "(after a 410 Gone disabled it, say)"})


class WebhookSchema(Schema):
    id = fields.String()
    url = fields.String()
    events = fields.List(fields.String(metadata={"enum": EVENT_TYPES}), allow_none=True,
                         metadata={"description": "null: every event type"})
    enabled = fields.Boolean()
    disabled_reason = fields.String(metadata={"description": "why warmpool disabled it (a 410 Gone)"})
    created_at = fields.String()


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(metadata={"description": "whsec_...: verifies the deliveries' signatures. "
                                                    "Shown only in this answer."})


class SecretSchema(Schema):
    id = fields.String()
    secret = fields.String(metadata={"description": f"the new whsec_... secret; deliveries are signed with it "
                                                    f"and the previous one for {PREVIOUS_SECRET_SECONDS // 3600} h"})


class WebhookListSchema(Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema))
    count = fields.Integer()


class DeliveryAttemptSchema(Schema):
    attempt = fields.Integer()
    at = fields.String()
    status_code = fields.Integer(allow_none=True, metadata={"description": "null: no answer"})
    error = fields.String(allow_none=True, metadata={"description": "null: a 2xx answer"})
    duration_ms = fields.Float()
    retry_after = fields.Float(allow_none=True, metadata={"description": "the receiver's Retry-After, in seconds"})


class DeliverySchema(Schema):
    id = fields.String(metadata={"description": "the webhook-id header, the same on every attempt"})
    type = fields.String(metadata={"enum": EVENT_TYPES + [TEST_TYPE]})
    machine_id = fields.Integer(allow_none=True, metadata={"description": "null: a webhook.test event"})
    state = fields.String(metadata={"enum": ["pending", "delivered", "failed"]})
    next_attempt_at = fields.String(allow_none=True, metadata={"description": "when a pending delivery is "
                                                                              "tried again"})
    created_at = fields.String()
    attempts_made = fields.Integer(metadata={"description": "every attempt made so far; attempts lists the latest "
                                                            f"{ATTEMPTS_KEPT}"})
    attempts = fields.List(fields.Nested(DeliveryAttemptSchema))


class DeliveryListSchema(Schema):
    webhook_id = fields.String()
    deliveries = fields.List(fields.Nested(DeliverySchema))
    count = fields.Integer()


def errors(*codes: int):
    """Document these error answers of a route (each a JSON error)."""
    def decorate(function):
        for code in codes:
            function = blp.alt_response(code, response="DEFAULT_ERROR")(function)
        return function
    return decorate


def get_webhook(webhook_id: str) -> dict:
    hook = runtime.store().get_webhook(g.tenant, webhook_id)
    if hook is None:
        abort(404, message=f"No webhook {webhook_id}")
    return hook


def checked_url(url: str) -> str:
    """``url``, or a 422 naming the field if warmpool will not call it. Its name is not resolved here
    (``check_url``): every attempt resolves and checks it."""
    try:
        check_url(url, runtime.settings().webhook_allow_private)
    except UnsafeDestination as exc:
        abort(422, message="The webhook URL is not allowed", errors={"json": {"url": [str(exc)]}})
    return url


@blp.route("")
class Webhooks(MethodView):
    @blp.response(200, WebhookListSchema)
    @errors(401)
    def get(self):
        """This tenant's webhooks (their secrets are never shown again)"""
        hooks = runtime.store().webhooks(g.tenant)
        return {"webhooks": hooks, "count": len(hooks)}

    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookCreatedSchema)
    @errors(401, 409)
    def post(self, spec):
        """Subscribe a URL to pool events; the answer holds the signing secret, once"""
        url = checked_url(spec["url"])
        events = sorted(set(spec["events"])) if spec["events"] else None
        try:
            return runtime.store().add_webhook(g.tenant, url, events)
        except TooManyWebhooks:
            abort(409, message=f"At most {MAX_WEBHOOKS} webhooks per tenant; delete one first")


@blp.route("/" + WEBHOOK)
class WebhookById(MethodView):
    @blp.arguments(WebhookPatchSchema)
    @blp.response(200, WebhookSchema)
    @errors(401, 404)
    def patch(self, changes, webhook_id):
        """Change the url, the events or whether it is enabled; what is left out stays"""
        if "url" in changes:
            checked_url(changes["url"])
        if "events" in changes:
            changes["events"] = sorted(set(changes["events"])) if changes["events"] else None
        if changes.get("enabled"):
            changes["disabled_reason"] = None

        def change(hook: dict) -> dict:
            hook = {**hook, **changes}
            if hook.get("disabled_reason") is None:
                hook.pop("disabled_reason", None)
            return hook
        hook = runtime.store().update_webhook(g.tenant, webhook_id, change)
        if hook is None:
            abort(404, message=f"No webhook {webhook_id}")
        return hook

    @blp.response(204)
    @errors(401, 404)
    def delete(self, webhook_id):
        """Unsubscribe; deliveries not yet made are dropped"""
        if not runtime.store().delete_webhook(g.tenant, webhook_id):
            abort(404, message=f"No webhook {webhook_id}")


@blp.route("/" + WEBHOOK + "/deliveries")
class Deliveries(MethodView):
    @blp.response(200, DeliveryListSchema)
    @errors(401, 404)
    def get(self, webhook_id):
        """A webhook's recent deliveries, newest first, with every attempt"""
        get_webhook(webhook_id)
        deliveries = runtime.store().deliveries(webhook_id)
        return {"webhook_id": webhook_id, "deliveries": deliveries, "count": len(deliveries)}


@blp.route("/" + WEBHOOK + "/test")
class WebhookTest(MethodView):
    @blp.response(202, DeliverySchema, headers=LOCATION)
    @errors(401, 404, 409, 429)
    def post(self, webhook_id):
        """Send this webhook a webhook.test event; follow it in its deliveries"""
        hook = enabled_webhook(webhook_id)
        try:
            return accepted(runtime.store().queue_test_delivery(g.tenant, hook,
                                                                runtime.settings().webhook_pending_per_tenant))
        except TooManyPending:
            too_many_pending()


@blp.route("/" + WEBHOOK + "/deliveries/" + DELIVERY + "/resend")
class Resend(MethodView):
    @blp.response(202, DeliverySchema, headers=LOCATION)
    @errors(401, 404, 409, 429)
    def post(self, webhook_id, delivery_id):
        """Attempt a delivery again, now (once; a delivery still retrying gets its next attempt now)"""
        enabled_webhook(webhook_id)
        delivery = runtime.store().get_delivery(delivery_id)
        gone = f"No delivery {delivery_id} of webhook {webhook_id}"
        if delivery is None or delivery["tenant"] != g.tenant or delivery["webhook_id"] != webhook_id:
            abort(404, message=gone)
        try:
            return accepted(runtime.store().resend_delivery(g.tenant, delivery_id,
                                                            runtime.settings().webhook_pending_per_tenant))
        except TooManyPending:
            too_many_pending()
        except DeliveryGone:  # it expired since it was read
            abort(404, message=gone)


@blp.route("/" + WEBHOOK + "/rotate-secret")
class RotateSecret(MethodView):
    @blp.response(200, SecretSchema)
    @errors(401, 404)
    def post(self, webhook_id):
        """A new signing secret, shown once; the previous one still signs deliveries (beside it) for 24 h"""
        hook = runtime.store().rotate_secret(g.tenant, webhook_id)
        if hook is None:
            abort(404, message=f"No webhook {webhook_id}")
        return {"id": hook["id"], "secret": hook["secret"]}


def accepted(delivery: dict) -> tuple[dict, int, dict]:
    """202, the delivery, and where its attempts show."""
    return delivery, 202, {"Location": url_for("webhooks.Deliveries", webhook_id=delivery["webhook_id"])}


def too_many_pending():
    abort(429, message=f"At most {runtime.settings().webhook_pending_per_tenant} deliveries per tenant may be pending "
                       f"(WEBHOOK_PENDING_PER_TENANT); try again once some are delivered or failed")


def enabled_webhook(webhook_id: str) -> dict:
    hook = get_webhook(webhook_id)
    if not hook["enabled"]:
        abort(409, message=f"Webhook {webhook_id} is disabled; PATCH it with enabled true first")
    return hook
