"""Outbound URLs that tenants give us (webhooks): the SSRF check, and one POST pinned to the checked address.

Both the API (when a webhook is registered or changed) and the webhooks worker (on every attempt) use
this module, so the web layer does not import a worker module for it.

The POST is hand-written on ``http.client`` rather than ``requests``/urllib3, for three guarantees those
cannot give: the connection goes to the very address that was checked (no second DNS answer, so no
rebinding past the check), while the Host header and TLS SNI keep the name; the whole exchange -
connect, request, status line, headers and body - has one hard deadline, enforced by a timer that
shuts the socket down, so a receiver that trickles a byte every few seconds cannot hold a thread; and
nothing logs the URL (urllib3 logs whole URLs, tokens in query strings included).

Registration (``check_url``) resolves nothing; the DNS lookup of an attempt is under the same deadline:
``check_destination`` is given the time left, and ``resolve_within`` gives up on the lookup when it runs
out (see there why a thread of its own).
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
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215
SPECIAL_USE_NAMES = ("localhost", "invalid")  # RFC 6761: always loopback, never resolved
_NOT_PUBLIC = f"a loopback, private or link-local address; set {ALLOW_PRIVATE}=1 to allow that"
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


def check_url(url: str, allow_private: bool) -> None:
    """The check at registration, with no DNS lookup: UnsafeDestination unless ``url`` is http(s) with a
    host that is not a private literal address nor a special-use name (``localhost``, ``.invalid``).

    A name is not resolved here: a name server that never answers would hold an API thread, and its
    answer could change before the first attempt anyway. Every attempt resolves and checks it, and
    connects to the address it checked (``check_destination``).
    """
    scheme, host, port, parts = _split(url)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        if not allow_private and host.rstrip(".").lower().rsplit(".", 1)[-1] in SPECIAL_USE_NAMES:
            raise UnsafeDestination(f"Host {host} is {_NOT_PUBLIC}") from None
        return
    _check_public(host, [str(literal)], allow_private)


def check_destination(url: str, allow_private: bool, within: float) -> Destination:
    """The destination to connect to, or UnsafeDestination unless ``url`` is http(s) and every address
    its host resolves to is public (or private ones are allowed); DeadlineExceeded when the name has no
    answer ``within`` seconds."""
    scheme, host, port, parts = _split(url)
    try:
        addresses = resolve_within(host, port, within)
    except (OSError, UnicodeError, ValueError):
        raise UnsafeDestination(f"Cannot resolve host {host}") from None
    _check_public(host, addresses, allow_private)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(scheme, host, port, target, addresses[0])


def _split(url: str):
    """The scheme, host, port (the scheme's by default) and parts of an http(s) URL, or UnsafeDestination."""
    parts = urlsplit(url)
    try:
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    except ValueError:
        raise UnsafeDestination("Not a valid port") from None
    if scheme not in ("http", "https") or not host:
        raise UnsafeDestination("Not an http(s) URL with a host")
    if not url.isascii():  # a request line is ASCII: percent-encode the path, punycode the name
        raise UnsafeDestination("Not an ASCII URL; percent-encode its path and query, and write the host in punycode")
    return scheme, host, port or (443 if scheme == "https" else 80), parts


def _check_public(host: str, addresses: list[str], allow_private: bool) -> None:
    if allow_private:
        return
    for raw in addresses:
        address = ipaddress.ip_address(raw)
        if not all(reached.is_global for reached in [address, *embedded_ipv4(address)]):
            raise UnsafeDestination(f"Host {host} resolves to {_NOT_PUBLIC}")


def embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a translator or tunnel: IPv4-mapped, 6to4, Teredo
    and NAT64 (64:ff9b::/96; the local-use 64:ff9b:1::/48 carries one too, so none of it is public). Python
    calls ``64:ff9b::a9fe:a9fe`` global, though a NAT64 gateway takes it to 169.254.169.254."""
    if address.version != 6:
        return []
    reached = [a for a in (address.ipv4_mapped, address.sixtofour, address.teredo and address.teredo[1]) if a]
    if address in NAT64_WELL_KNOWN:
        reached.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in NAT64_LOCAL_USE:
        reached.append(ipaddress.IPv4Address("0.0.0.0"))  # an embedding the local network chooses: never public
    return reached


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
