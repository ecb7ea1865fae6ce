"""Bearer keys per tenant: from WARMPOOL_API_KEYS, or created with ``warmpool create-key`` (stored hashed)."""

from flask import g, request

from app import runtime
from app.api import abort


def authenticate() -> None:
    """Find the tenant of the request's Bearer key, or answer 401."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    tenant = None
    if scheme.lower() == "bearer" and key:
        tenant = runtime.store().tenant_for_key(key, runtime.settings().api_keys)
    if not tenant:
        abort(401, message="Missing or invalid API key: send Authorization: Bearer <key>",
              headers={"WWW-Authenticate": "Bearer"})
    g.tenant = tenant
