"""Thin Vast.ai REST client: the provider layer of warmpool.

Covers the endpoints the service uses: search offers, create, show, list, start, stop and destroy
instances, search, create, show and delete local volumes, copy volumes (the routes and answers are
those the simulator speaks, docs/simulator.md).

One pooled ``requests.Session`` per client, explicit (connect, read) timeouts, retries with
exponential backoff and full jitter bounded by ``max_attempts`` and ``total_timeout``, and
typed errors so callers can tell "the provider says no" (``NotFound``, ``RequestRejected``)
from "the provider could not be asked" (``ProviderUnavailable``, ``RateLimited``).

Creating calls are not idempotent: they are retried only on 429 and when the request surely
never reached the server; any other failure raises at once and the caller re-checks the
provider by label. The API key is sent as a Bearer header only and is never logged or put in
an exception message.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://console.vast.ai"
POOL_SIZE = 32
MIN_ATTEMPT_TIMEOUT = 1.0  # an attempt near the deadline still gets a usable timeout
LIST_PAGE_ROWS = 25  # rows a page of GET /api/v1/instances/ asks for
RETRY_STATUSES = frozenset({429, 502, 503, 504})
NOT_FOUND_ERRORS = frozenset({"no_such_instance", "no_such_volume", "not_found"})
TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)

Throttle = Callable[[str], None]
# called with (endpoint, method) right before each request is sent; raising stops the request
Guard = Callable[[str, str], None]
# called with (endpoint, HTTP status) after each attempt, the status None when no response came: metrics
Observer = Callable[[str, int | None], None]


class VastError(Exception):
    """Base of every client error; ``status`` is the HTTP status when there was a response."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(VastError):
    """The instance or volume does not exist (any more)."""


class RateLimited(VastError):
    """429 after retries (or a search quota, never retried); ``retry_after`` in seconds if known."""

    def __init__(self, message: str, status: int | None = 429, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class ProviderUnavailable(VastError):
    """The API itself is failing: 5xx, connection errors, timeouts, unparseable answers."""


class RequestRejected(VastError):
    """The API refused the request (4xx or ``success: false``); ``error``/``msg`` from Vast's body."""

    def __init__(self, message: str, status: int | None, error: str | None, msg: str | None) -> None:
        super().__init__(message, status)
        self.error = error
        self.msg = msg


class OfferUnavailable(RequestRejected):
    """Create refused because the offer is gone (``no_such_ask``): pick another offer."""


@dataclass
class InstanceListing:
    instances: list[dict]
    label_counts: dict[str, int]
    total_instances: int | None  # None: the provider did not say


@dataclass
class _Reply:
    status: int
    body: Any  # parsed JSON, or None when the body is not JSON
    retry_after: float | None


class VastClient:
    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str = "",
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        total_timeout: float = 60.0,
        throttle: Throttle | None = None,
        guard: Guard | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.total_timeout = total_timeout
        self.throttle = throttle
        self.guard = guard
        self.observe = observe
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers["Accept"] = "application/json"
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:
        return f"VastClient(base_url={self.base_url!r}, api_key=<hidden>)"

    def close(self) -> None:
        self._session.close()

    # ---- offers and instances -------------------------------------------------------------

    def search_offers(self, query: dict) -> list[dict]:
        body = self._call("search_offers", "POST", "/api/v0/bundles/", json_body=query)
        return _get(body, "offers", list)

    def create_instance(
        self,
        offer_id: int,
        *,
        image: str,
        disk: float,
        label: str,
        onstart: str | None = None,
        env: dict | None = None,
        target_state: str = "running",
        volume_info: dict | None = None,
    ) -> int:
        """Rent an offer; returns the new instance id. Raises OfferUnavailable if the offer is gone."""
        payload: dict[str, Any] = {
            "client_id": "me", "image": image, "env": env or {}, "price": None, "disk": float(disk),
            "label": label, "extra": None, "onstart": onstart, "image_login": None,
            "python_utf8": False, "lang_utf8": False, "use_jupyter_lab": False, "jupyter_dir": None,
            "force": False, "cancel_unavail": False, "template_hash_id": None, "user": None,
            "runtype": "ssh", "target_state": target_state,
        }
        if volume_info is not None:
            payload["volume_info"] = volume_info
        body = self._call("create_instance", "PUT", f"/api/v0/asks/{int(offer_id)}/",
                          json_body=payload, creates=True)
        return _get(body, "new_contract", int)

    def show_instance(self, instance_id: int) -> dict | None:
        """The instance, or None when Vast no longer knows it."""
        try:
            body = self._call("show_instance", "GET", f"/api/v0/instances/{int(instance_id)}/",
                              params={"owner": "me"})
        except NotFound:
            return None
        return _get(body, "instances", (dict, type(None)))

    def labelled(self, *labels: str) -> list[dict]:
        """The instances carrying any of ``labels``, in one list call (labels are how a pool finds what it made,
        rule 4)."""
        return self.list_instances({"label": {"eq": labels[0]} if len(labels) == 1 else {"in": list(labels)}}).instances

    def list_instances(self, select_filters: dict | None = None, *, attempts: int | None = None) -> InstanceListing:
        """Every instance matching ``select_filters`` (all pages, ``LIST_PAGE_ROWS`` rows each).

        ``attempts`` overrides the client's per call: a periodic check passes 1, its next run is the retry.
        """
        params: dict[str, Any] = {
            "select_filters": select_filters or {},
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": LIST_PAGE_ROWS,
        }
        first = self._call("list_instances", "GET", "/api/v1/instances/", params=params, attempts=attempts)
        instances = list(_get(first, "instances", list))
        seen: set[str] = set()
        page = first
        while (token := page.get("next_token")) is not None:
            if token in seen:
                raise ProviderUnavailable("GET /api/v1/instances/: pagination token repeated")
            seen.add(token)
            page = self._call("list_instances", "GET", "/api/v1/instances/",
                              params={**params, "after_token": token}, attempts=attempts)
            instances.extend(_get(page, "instances", list))
        return InstanceListing(
            instances=instances,
            label_counts=first.get("label_counts") or {},
            total_instances=None if first.get("total_instances") is None else int(first["total_instances"]),
        )

    def start_instance(self, instance_id: int) -> None:
        self._manage(instance_id, {"state": "running"})

    def stop_instance(self, instance_id: int) -> None:
        self._manage(instance_id, {"state": "stopped"})

    def label_instance(self, instance_id: int, label: str) -> None:
        self._manage(instance_id, {"label": label})

    def _manage(self, instance_id: int, change: dict) -> None:
        self._call("manage_instance", "PUT", f"/api/v0/instances/{int(instance_id)}/", json_body=change)

    def destroy_instance(self, instance_id: int) -> None:
        """Destroy; an instance that is already gone counts as destroyed."""
        try:
            self._call("destroy_instance", "DELETE", f"/api/v0/instances/{int(instance_id)}/", json_body={})
        except NotFound:
            pass

    # ---- volumes --------------------------------------------------------------------------

    def search_volume_offers(self, query: dict) -> list[dict]:
        body = self._call("search_volumes", "POST", "/api/v0/volumes/search/", json_body=query)
        return _get(body, "offers", list)

    def create_volume(self, offer_id: int, size: int, name: str) -> int:
        """Create a local volume on the offer's machine; returns its id (from ``V.<id>``)."""
        body = self._call("volumes", "PUT", "/api/v0/volumes/",
                          json_body={"size": int(size), "id": int(offer_id), "name": name}, creates=True)
        name_seen = body.get("volume_name")
        match = re.fullmatch(r"V\.(\d+)", str(name_seen))
        if match is None:
            raise ProviderUnavailable(f"PUT /api/v0/volumes/: unexpected volume_name {name_seen!r}", 200)
        return int(match.group(1))

    def show_volumes(self) -> list[dict]:
        body = self._call("volumes", "GET", "/api/v0/volumes",
                          params={"owner": "me", "type": "all_volume"})
        return _get(body, "volumes", list)

    def delete_volume(self, volume_id: int) -> None:
        """Delete; a volume that is already gone counts as deleted."""
        try:
            self._call("volumes", "DELETE", "/api/v0/volumes/", params={"id": int(volume_id)}, json_body={})
        except NotFound:
            pass

    def copy_volume(self, src_id: int, dst_id: int) -> None:
        """Copy a volume onto another, on any machine (``vastai copy V.<src>:/ V.<dst>:/``); both machines must be
        online (else RequestRejected, ``error`` machine_offline). Vast reports no progress: the destination's row
        in ``show_volumes`` is ``copying`` until the copy lands."""
        self._call("copy", "PUT", "/api/v0/commands/copy_direct/", json_body={
            "client_id": "me", "src_id": f"V.{int(src_id)}", "dst_id": f"V.{int(dst_id)}",
            "src_path": "/", "dst_path": "/"})

    def cancel_copy(self, dst_id: int) -> bool:
        """Stop the copy into a volume (``vastai cancel copy V.<dst>``); False when none was under way."""
        try:
            self._call("copy", "DELETE", "/api/v0/commands/copy_direct/", json_body={"dst_id": f"V.{int(dst_id)}"})
        except RequestRejected as exc:
            if exc.error is None and exc.status == 200:  # {"success": false, "msg": "No copy in progress ..."}
                return False
            raise
        return True

    # ---- transport ------------------------------------------------------------------------

    def _call(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        creates: bool = False,
        attempts: int | None = None,
    ) -> dict:
        """One logical call: attempts, backoff and error mapping. Returns the JSON object."""
        where = f"{method} {path}"
        query = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (params or {}).items()}
        data = None if json_body is None else json.dumps(json_body)
        headers = {"Content-Type": "application/json"} if data is not None else None
        deadline = time.monotonic() + self.total_timeout
        max_attempts = attempts or self.max_attempts
        attempt = 0
        while True:
            attempt += 1
            if self.throttle is not None:
                self.throttle(endpoint)
            if self.guard is not None:
                self.guard(endpoint, method)  # last word before the request leaves: fencing (rule 12)
            remaining = max(deadline - time.monotonic(), MIN_ATTEMPT_TIMEOUT)
            timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
            try:
                resp = self._send(endpoint, method, self.base_url + path, params=query, data=data,
                                  headers=headers, timeout=timeout)
            except TRANSIENT_ERRORS as exc:
                failure: VastError = ProviderUnavailable(self._redact(f"{where}: {_describe(exc)}"))
                failure.__cause__ = exc
                if creates and not _never_sent(exc):
                    raise failure
                retry_after = None
            except requests.RequestException as exc:
                raise ProviderUnavailable(self._redact(f"{where}: {_describe(exc)}")) from exc
            else:
                reply = _Reply(resp.status_code, _json_or_none(resp), _retry_after(resp))
                if not _retryable(reply, creates):
                    return self._result(where, reply)
                failure = self._error(where, reply)
                retry_after = reply.retry_after

            left = deadline - time.monotonic()
            if retry_after is not None:
                delay = retry_after
            else:
                delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))
            if attempt >= max_attempts or delay >= left:
                raise failure
            log.warning("vast %s failed (%s); attempt %d/%d, retrying in %.2fs",
                        where, failure, attempt, max_attempts, delay)
            time.sleep(delay)

    def _send(self, endpoint: str, method: str, url: str, **kwargs) -> requests.Response:
        """One attempt; the observer hears of its status, or that no response came."""
        try:
            resp = self._session.request(method, url, **kwargs)
        except requests.RequestException:
            if self.observe is not None:
                self.observe(endpoint, None)
            raise
        if self.observe is not None:
            self.observe(endpoint, resp.status_code)
        return resp

    def _result(self, where: str, reply: _Reply) -> dict:
        if 200 <= reply.status < 300:
            if not isinstance(reply.body, dict):
                raise ProviderUnavailable(self._redact(f"{where}: {reply.status} with a non-JSON-object body"),
                                          reply.status)
            if reply.body.get("success") is False:
                raise self._error(where, reply)
            return reply.body
        raise self._error(where, reply)

    def _error(self, where: str, reply: _Reply) -> VastError:
        body = reply.body if isinstance(reply.body, dict) else {}
        error = body.get("error")
        msg = body.get("msg") or body.get("message") or body.get("detail")
        error = None if error is None else str(error)
        msg = None if msg is None else str(msg)
        status = reply.status
        text = self._redact(f"{where}: {status} {error or '-'}: {msg or '(no message)'}")
        if status == 429:
            return RateLimited(text, status, reply.retry_after)
        if status >= 500:
            return ProviderUnavailable(text, status)
        if status in (401, 403) or error == "auth_error":
            return RequestRejected(text, status, "auth_error", msg)
        if "no_such_ask" in f"{error} {msg}":
            return OfferUnavailable(text, status, error, msg)
        if status == 404 and (error in NOT_FOUND_ERRORS or "not found" in (msg or "").lower()):
            return NotFound(text, status)
        return RequestRejected(text, status, error, msg)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "<hidden>") if self._api_key else text


def _get(body: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProviderUnavailable(f"unexpected response: {key!r} is {type(value).__name__}")
    return value


def _json_or_none(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _retry_after(resp: requests.Response) -> float | None:
    """Seconds to wait: a numeric Retry-After, else an epoch X-RateLimit-Reset (search quota)."""
    seconds = _number(resp.headers.get("Retry-After"))
    if seconds is None and (reset := _number(resp.headers.get("X-RateLimit-Reset"))) is not None:
        seconds = reset - time.time()
    return None if seconds is None else max(seconds, 0.0)


def _number(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _retryable(reply: _Reply, creates: bool) -> bool:
    """429 (except the daily search quota) and 502/503/504; a create only on 429."""
    if reply.status == 429:
        return not (isinstance(reply.body, dict) and reply.body.get("error") == "search_quota_exceeded")
    return reply.status in RETRY_STATUSES and not creates


def _never_sent(exc: Exception) -> bool:
    """True when the request surely never reached the server (connect failed or timed out)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = exc.args[0] if isinstance(exc, requests.ConnectionError) and exc.args else None
    return isinstance(reason, MaxRetryError) and isinstance(reason.reason, NewConnectionError)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
