"""Vast's account notifications: a fast extra trigger for failovers, never trusted alone.

Vast POSTs events (an instance offline, a rental expiring...) signed with HMAC-SHA256 of the raw
body in ``X-Vast-Signature-256``, at least once. Each Vast account has its own URL and secret (rule 17):
the default account's (VAST_API_KEY) at ``/notifications`` with VAST_WEBHOOK_SECRET, an account of
VAST_ACCOUNTS at ``/notifications/<account>`` (the account's name: the first 12 hex digits of its key's
sha256) with its entry's ``webhook_secret``; an account's notification is looked up among that account's
pools only. A verified "instance offline" for a watched primary starts the same path as a failed health
sweep: the failover's first step asks the provider directly, and only a definitive answer goes on (rule 14
in docs/architecture.md). A replayed body is dropped, and notifications check one pool at most once per
NOTIFICATION_CHECK_INTERVAL (``commands.provider_notice``). A body past MAX_CONTENT_LENGTH is refused (413) before it is read.
"""

import hashlib
import hmac

from flask import request
from flask.views import MethodView
from marshmallow import INCLUDE, Schema, fields

from app import commands, runtime
from app.api import Blueprint, abort
from app.settings import DEFAULT_ACCOUNT

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
    """401 unless the body is signed with the secret of the account the URL names (404 when that account has
    none, or is not one of the service's)."""
    secret = runtime.settings().webhook_secret(notified_account())
    if not secret:
        abort(404, message="Vast notifications are not enabled for this account: set VAST_WEBHOOK_SECRET (the "
                           "default account), or the account's webhook_secret in VAST_ACCOUNTS")
    expected = "sha256=" + hmac.new(secret.encode(), request.get_data(cache=True), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("X-Vast-Signature-256", "")):
        abort(401, message="Missing or wrong X-Vast-Signature-256")


def notified_account() -> str:
    """The Vast account whose notification this request is, by its URL: the default one without a name."""
    return (request.view_args or {}).get("account", DEFAULT_ACCOUNT)


blp.before_request(verify_signature)


@blp.route("/notifications")
@blp.route("/notifications/<string:account>", parameters=[{
    "in": "path", "name": "account", "description": "a Vast account of VAST_ACCOUNTS: the first 12 hex digits of "
                                                    "the sha256 of its API key"}])
class Notifications(MethodView):
    @blp.doc(security=[])  # signed by Vast, not called with an API key
    @blp.arguments(NotificationSchema)
    @blp.response(200, NoticeAnswerSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def post(self, notice, account: str = DEFAULT_ACCOUNT):
        """Take a notification from Vast.ai (one Vast account's: the default one's, or the account named)"""
        # the replay window is each account's: a body one account's secret signed never drops another's
        digest = hashlib.sha256(f"{account}\n".encode() + request.get_data(cache=True)).hexdigest()
        return {"accepted": True,
                "action": commands.provider_notice(notice["event"], notice["instance_id"], digest, account)}
