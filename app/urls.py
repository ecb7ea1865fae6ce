"""Outbound URLs that tenants give us (webhooks): the SSRF check, and one POST pinned to the checked address.

Both the API (when a webhook is registered or changed) and the webhooks worker (on every attempt) use
this module, so the web layer does not import a worker module for it.

The POST is hand-written on ``http.client`` rather than ``requests``/urllib3, for three guarantees those
cannot give: the connection goes to the very address that was checked (no second DNS answer, so no
rebinding past the check), while the Host header and TLS SNI keep the name; the whole exchange -
connect, request, status line, headers and body - has one hard deadline, enforced by a timer that
shuts the socket down, so a receiver that trickles a byte every few seconds cannot hold a thread; and
nothing logs the URL (urllib3 logs whole URLs, tokens in query strings included).

The DNS lookup is under the same deadline: ``check_destination`` is given the time left, and
``resolve_within`` gives up on the lookup when it runs out (see there why a thread of its own).
"""

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOW_PRIVATE = "WARMPOOL_WEBHOOK_ALLOW_PRIVATE"
BODY_READ_LIMIT = 64 * 1024  # of a receiver's answer: read (so it must arrive in time), then dropped


class UnsafeDestination(ValueError):
    """A webhook URL warmpool will not call."""


class DeadlineExceeded(Exception):
    """The exchange did not end within its deadline."""


@dataclass(frozen=True)
class Destination:
    """A checked URL: where to connect (``address``) and what to call it (``host``, for Host and SNI)."""

    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line
    address: str


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to: the one seam between a name and where we connect."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [str(sockaddr[0]).split("%")[0] for *_, sockaddr in infos]


def resolve_within(host: str, port: int, seconds: float) -> list[str]:
    """``resolve(host, port)``, or DeadlineExceeded once ``seconds`` have passed without an answer.

    ``getaddrinfo`` takes no timeout and cannot be interrupted (the system resolver retries as resolv.conf
    says), so the lookup runs on a daemon thread of its own and the caller waits only the time it has left:
    a lookup given up on ends on that thread when the resolver gives up, holding no delivery thread. A thread
    per lookup rather than a shared executor, because a small executor is a queue one tenant's slow name
    server could fill, making other tenants' lookups wait; and a resolver library with its own timeout
    (dnspython) would skip /etc/hosts and the system's other name sources.
    """
    answer: Future = Future()

    def lookup():
        try:
            answer.set_result(resolve(host, port))
        except Exception as exc:  # handed to the caller, who decides
            answer.set_exception(exc)
    threading.Thread(target=lookup, name="dns-lookup", daemon=True).start()
    try:
        return answer.result(timeout=max(0.0, seconds))
    except TimeoutError:
        raise DeadlineExceeded(f"no DNS answer for {host} within {seconds:g} s") from None


def check_destination(url: str, allow_private: bool, within: float) -> Destination:
    """The destination to connect to, or UnsafeDestination unless ``url`` is http(s) and every address
    its host resolves to is public (or private ones are allowed); DeadlineExceeded when the name has no
    answer ``within`` seconds."""
    parts = urlsplit(url)
    try:
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    except ValueError:
        raise UnsafeDestination("Not a valid port") from None
    if scheme not in ("http", "https") or not host:
        raise UnsafeDestination("Not an http(s) URL with a host")
    port = port or (443 if scheme == "https" else 80)
    try:
        addresses = resolve_within(host, port, within)
    except (OSError, UnicodeError, ValueError):
        raise UnsafeDestination(f"Cannot resolve host {host}") from None
    if not allow_private:
        for raw in addresses:
            address = ipaddress.ip_address(raw)
            address = getattr(address, "ipv4_mapped", None) or address
            if not address.is_global:
                raise UnsafeDestination(f"Host {host} resolves to a loopback, private or link-local "
                                        f"address; set {ALLOW_PRIVATE}=1 to allow that")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(scheme, host, port, target, addresses[0])


class _PinnedConnection(http.client.HTTPSConnection):
    """An HTTP(S) connection to ``destination.address`` that names ``destination.host`` in Host and SNI."""

    def __init__(self, destination: Destination, timeout: float, expired: threading.Event):
        super().__init__(destination.host, destination.port, timeout=timeout,
                         context=ssl.create_default_context())
        self.destination, self.expired = destination, expired
        self.default_port = 443 if destination.scheme == "https" else 80  # Host names a port only when not this

    def connect(self):
        self.sock = socket.create_connection((self.destination.address, self.destination.port), self.timeout)
        if self.expired.is_set():  # the deadline passed while connecting: the timer found no socket to cut
            raise DeadlineExceeded("connected too late")
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.destination.scheme == "https":
            context = self._context  # type: ignore[attr-defined]  # HTTPSConnection's own; private in typeshed
            self.sock = context.wrap_socket(self.sock, server_hostname=self.destination.host)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]


def post_pinned(destination: Destination, body: bytes, headers: dict[str, str], deadline: float) -> Answer:
    """POST ``body`` to ``destination`` and read the answer, all within ``deadline`` seconds, or raise
    DeadlineExceeded (or an OSError / http.client error for a refused or broken exchange)."""
    if deadline <= 0:  # spent before the exchange began (on the DNS lookup): a timer of 0 would cut nothing
        raise DeadlineExceeded("no time left to connect")
    expired = threading.Event()
    connection = _PinnedConnection(destination, deadline, expired)

    def cut():
        expired.set()
        if connection.sock is not None:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read or write at once
            except OSError:
                pass

    timer = threading.Timer(deadline, cut)
    timer.daemon = True
    started = time.monotonic()
    timer.start()
    try:
        connection.request("POST", destination.target, body=body, headers=headers)
        response = connection.getresponse()
        response.read(BODY_READ_LIMIT)
        answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()})
    except DeadlineExceeded:
        raise DeadlineExceeded(f"no complete answer within {deadline:g} s") from None
    except (OSError, http.client.HTTPException):
        if expired.is_set() or time.monotonic() - started >= deadline:
            raise DeadlineExceeded(f"no complete answer within {deadline:g} s") from None
        raise
    finally:
        timer.cancel()
        connection.close()
    if expired.is_set():
        raise DeadlineExceeded(f"no complete answer within {deadline:g} s")
    return answer
