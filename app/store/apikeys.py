"""API keys created with ``warmpool create-key``, and revocations (of those and of WARMPOOL_API_KEYS)."""

import hashlib
from collections.abc import Iterable
from typing import cast

import redis

from app.store import keys


class ApiKeyRecords:
    """The API keys' repository (mixed into ``Store``). A key itself is never stored: only its sha256.

    Keys: ``API_KEYS`` (hash: sha256 of a created key -> tenant), ``REVOKED_KEYS`` (set: sha256 of revoked keys,
    configured ones too, since those cannot be deleted from the environment).

    No method here is a compare-and-set. Unconditional writes: ``add_api_key``; ``revoke_api_key`` reads every
    key to find the one meant, then marks it revoked and drops its record in one transaction (MULTI). Plain
    reads: ``tenant_for_key`` (every request's), ``api_keys``.
    """

    r: redis.Redis

    def add_api_key(self, tenant: str, key: str) -> None:
        self.r.hset(keys.API_KEYS, _digest(key), tenant)

    def tenant_for_key(self, key: str, configured: dict[str, str]) -> str | None:
        """The tenant of a key, created (stored hashed) or ``configured`` (WARMPOOL_API_KEYS); None once revoked."""
        digest = _digest(key)
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hget(keys.API_KEYS, digest)
            pipe.sismember(keys.REVOKED_KEYS, digest)
            stored, revoked = pipe.execute()
        return None if revoked else configured.get(key) or stored

    def api_keys(self, configured: dict[str, str]) -> list[dict]:
        """Every key that works, by id (the start of its hash: the key itself is never stored)."""
        revoked = self.r.smembers(keys.REVOKED_KEYS)
        created = cast(dict[str, str], self.r.hgetall(keys.API_KEYS))
        found = [{"id": key_id(digest), "tenant": tenant, "source": "created"} for digest, tenant in created.items()]
        found += [{"id": key_id(_digest(key)), "tenant": tenant, "source": "WARMPOOL_API_KEYS"}
                  for key, tenant in configured.items() if _digest(key) not in revoked]
        return sorted(found, key=lambda k: (k["tenant"], k["id"]))

    def revoke_api_key(self, id_or_key: str, configured: dict[str, str]) -> dict | None:
        """Revoke the one working key whose id (or which) this is: it gets 401 from the next request. A key
        revoked before answers ``already_revoked``; None if no key, or several, match (ask with a longer id)."""
        if len(id_or_key) < MIN_KEY_ID:
            return None
        revoked = cast(set[str], self.r.smembers(keys.REVOKED_KEYS))
        stored = cast(dict[str, str], self.r.hgetall(keys.API_KEYS))
        working = {digest: tenant for digest, tenant
                   in {**stored, **{_digest(key): tenant for key, tenant in configured.items()}}.items()
                   if digest not in revoked}
        matches = _matching(id_or_key, working)
        if not matches:
            before = _matching(id_or_key, revoked)
            return {"id": key_id(before[0]), "already_revoked": True} if len(before) == 1 else None
        if len(matches) != 1:
            return None
        digest, = matches
        with self.r.pipeline() as pipe:
            pipe.sadd(keys.REVOKED_KEYS, digest)
            pipe.hdel(keys.API_KEYS, digest)
            pipe.execute()
        return {"id": key_id(digest), "tenant": working[digest]}


def _matching(id_or_key: str, digests: Iterable[str]) -> list[str]:
    """The digests that this id starts, or this key hashes to."""
    given = _digest(id_or_key)
    return [d for d in digests if d == given or d.startswith(id_or_key.lower())]


KEY_ID_LENGTH, MIN_KEY_ID = 12, 6  # ids as listed; the shortest start of one that revoke-key takes


def key_id(digest: str) -> str:
    return digest[:KEY_ID_LENGTH]


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
