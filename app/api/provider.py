"""Vast's account notifications: a fast extra trigger for failovers, never trusted alone.

Vast POSTs events (an instance offline, a rental expiring...) signed with HMAC-SHA256 of the raw
body in ``X-Vast-Signature-256``, at least once. A verified "instance offline" for a watched
primary starts the same path as a failed health sweep: the failover's first step asks the provider
directly, and only a definitive answer goes on (rule 14 in docs/architecture.md). A replayed body is
dropped, and notifications check one pool at most once per NOTIFICATION_CHECK_INTERVAL
(``commands.provider_notice``). A body past MAX_CONTENT_LENGTH is refused (413) before it is read.
"""

import hashlib
import hmac

from flask import request
from flask.views import MethodView
from marshmallow import INCLUDE, Schema, fields

from app import commands
from app.api import Blueprint, abort
from app.runtime import settings

blp = Blueprint("provider", __name__, url_prefix="/api/v1/provider",
                description="Notifications from Vast.ai, verified by their signature (no API key).")


class NotificationSchema(Schema):
    """One of Vast's account events."""

    class Meta:
        unknown = INCLUDE  # Vast may add fields

    event = fields.String(required=True, metadata={"example": "instance_offline"})
    instance_id = fields.Integer(load_default=None)
    machine_id = fields.Integer(load_default=None)


class NoticeAnswerSchema(Schema):
    accepted = fields.Boolean()
    action = fields.String(metadata={"description": "what warmpool does about it"})


def verify_signature() -> None:
    """401 unless the body is signed with VAST_WEBHOOK_SECRET (404 when no secret is configured)."""
    secret = settings().vast_webhook_secret
    if not secret:
        abort(404, message="Vast notifications are not enabled: set VAST_WEBHOOK_SECRET")
    expected = "sha256=" + hmac.new(secret.encode(), request.get_data(cache=True), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("X-Vast-Signature-256", "")):
        abort(401, message="Missing or wrong X-Vast-Signature-256")


blp.before_request(verify_signature)


@blp.route("/notifications")
class Notifications(MethodView):
    @blp.doc(security=[])  # signed by Vast, not called with an API key
    @blp.arguments(NotificationSchema)
    @blp.response(200, NoticeAnswerSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def post(self, notice):
        """Take a notification from Vast.ai"""
        digest = hashlib.sha256(request.get_data(cache=True)).hexdigest()
        return {"accepted": True, "action": commands.provider_notice(notice["event"], notice["instance_id"], digest)}
