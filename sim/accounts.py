"""Accounts: each API key is an account that sees only its own instances and volumes, as on Vast.

The gate names the request's account (``current``) once the key is accepted; the components read it
where they find or list a resource. The control routes (``/_sim/``) run with no account and see
everything. An account is named by a digest of its key, so stats and the ledger never show a key.
"""

import contextvars
import hashlib

# the account of the Vast request being handled; None: a control route, which sees every account
current: contextvars.ContextVar[str | None] = contextvars.ContextVar("sim_account", default=None)


def account_of(key: str) -> str:
    """The account a key belongs to: the first 12 hex digits of its sha256 (the warmpool client's stats use the same)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def visible(owner: str | None) -> bool:
    """Whether the request's account may see a resource that ``owner`` made."""
    who = current.get()
    return who is None or owner == who
