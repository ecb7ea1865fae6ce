"""The webhook sender's hygiene (issue 18): a tenant's webhooks are capped, no log line names a webhook's URL,
and the connection pinned to the checked address still names the host in TLS SNI (and checks its certificate
against that name)."""

import datetime
import logging
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

from app import urls
from app.processes import wait_until
from app.store.webhooks import FAILED, MAX_WEBHOOKS
from tasks.webhooks import deliver

TOKEN = "sekrit-token"


def test_a_tenants_webhooks_are_capped(env):
    """MAX_WEBHOOKS per tenant, checked and added in one script (tests/operator/test_webhooks.py's
    test_the_webhook_cap_holds_under_parallel_posts sends the POSTs at once, to real gunicorn)."""
    for i in range(MAX_WEBHOOKS):
        assert env.api("POST", "/api/v1/webhooks", json={"url": f"https://93.184.216.34/{i}"}).status_code == 201
    rv = env.api("POST", "/api/v1/webhooks", json={"url": "https://93.184.216.34/one-more"})
    assert rv.status_code == 409 and len(env.store.webhooks("acme")) == MAX_WEBHOOKS
    assert env.api("POST", "/api/v1/webhooks", tenant="globex",
                   json={"url": "https://93.184.216.34/x"}).status_code == 201  # another tenant's cap is its own


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_log_line_names_a_webhooks_url(env, caplog, monkeypatch):
    """Failing attempts, each given up at once: a refused connection, a URL http.client refuses (its error's
    text quotes the path and query), and an unexpected error whose text names the URL. Every log line, of
    every logger at every level, is free of the URL's token; only the exception's type is recorded."""
    env.configure(webhook_allow_private=True, webhook_retry_schedule=(0,), webhook_timeout=5)
    caplog.set_level(logging.DEBUG)
    refused = env.store.add_webhook("acme", f"http://127.0.0.1:{closed_port()}/hook?token={TOKEN}", None)
    quoted = env.store.add_webhook("acme", f"http://93.184.216.34/a b?token={TOKEN}", None)  # a space: InvalidURL
    env.store.event("acme:1", "healed", "the host has a free GPU again")
    for hook in (refused, quoted):
        [delivery] = env.store.deliveries(hook["id"])
        assert deliver(delivery["id"], 1) == FAILED

    surprising = env.store.add_webhook("globex", f"https://93.184.216.34/hook?token={TOKEN}", None)
    env.store.event("globex:1", "healed", "the host has a free GPU again")

    def broken(destination, *args):
        raise RuntimeError(f"cannot post to {destination.host}{destination.target}")
    monkeypatch.setattr("tasks.webhooks.post_pinned", broken)
    [delivery] = env.store.deliveries(surprising["id"])
    assert deliver(delivery["id"], 1) == FAILED

    logged = [f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    assert sum("given up" in line for line in logged) == 3  # the failures were logged
    assert [line for line in logged if TOKEN in line] == []
    errors = [env.store.deliveries(hook["id"])[0]["attempts"][0]["error"] for hook in (refused, quoted, surprising)]
    assert errors == ["ConnectionRefusedError", "InvalidURL", "RuntimeError"]


# -- SNI ------------------------------------------------------------------------------------------------------

SNI_NAME = "hooks.warmpool-sni.test"


def self_signed(tmp_path, name: str) -> tuple[str, str]:
    """A certificate for ``name`` and its key (PEM files), made now: with the ``cryptography`` package if it is
    installed, else with the ``openssl`` command."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is here to make a certificate")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
                        "-addext", f"subjectAltName=DNS:{name}"], check=True, capture_output=True)
        return str(cert), str(key)
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(cert), str(key)


class TLSReceiver:
    """An https endpoint on 127.0.0.1 that records the SNI name of each handshake (its SNI callback) and
    the Host of each request, and answers 204; a connection each on its own thread."""

    def __init__(self, cert: str, key: str):
        self.names: list[str | None] = []
        self.hosts: list[str] = []
        self.errors: list[str] = []  # what ended a connection early, to tell in a failure
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.sni_callback = lambda sslsock, name, context: self.names.append(name)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self.answer, args=(raw,), daemon=True).start()

    def answer(self, raw: socket.socket):
        raw.settimeout(30)  # the handshake's and the request's: far past the client's deadline
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                head, _, body = request.partition(b"\r\n\r\n")
                fields = dict(line.split(":", 1) for line in head.decode("latin-1").split("\r\n")[1:])
                fields = {name.strip().lower(): value.strip() for name, value in fields.items()}
                while len(body) < int(fields.get("content-length", 0)):  # all of it: closing on unread bytes
                    chunk = conn.recv(4096)                                # resets the connection, answer unread
                    if not chunk:
                        break
                    body += chunk
                self.hosts.append(fields["host"])
                conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError as exc:  # ssl.SSLError too: a client that refused our certificate hangs up in the handshake
            self.errors.append(repr(exc))
        finally:
            raw.close()

    def close(self):
        self.listener.close()


@pytest.fixture
def tls_receiver(tmp_path):
    cert, key = self_signed(tmp_path, SNI_NAME)
    receiver = TLSReceiver(cert, key)
    receiver.cert = cert
    yield receiver
    receiver.close()


class Resolver:
    """A resolver the test controls: every name resolves to 127.0.0.1; the names asked are kept."""

    def __init__(self, monkeypatch):
        self.asked: list[str] = []
        monkeypatch.setattr(urls, "resolve", self)

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return ["127.0.0.1"]


def test_the_pinned_connection_sends_the_name_as_sni_on_https(tls_receiver, monkeypatch):
    """The connection goes to the address checked (127.0.0.1, by the resolver the test controls), yet the TLS
    handshake names the host (SNI), the certificate is checked against that name, and Host says it too. Without
    trusting the receiver's certificate, the handshake fails: verification is on."""
    resolver = Resolver(monkeypatch)
    url = f"https://{SNI_NAME}:{tls_receiver.port}/hook"
    destination = urls.check_destination(url, allow_private=True, within=5)
    assert destination.address == "127.0.0.1" and destination.host == SNI_NAME

    with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs do not know this certificate
        urls.post_pinned(destination, b"{}", {}, deadline=10)
    wait_until(lambda: tls_receiver.names, timeout=10, message="the first handshake's SNI")
    assert tls_receiver.names == [SNI_NAME]

    default_context = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **kw: default_context(cafile=tls_receiver.cert))
    answer = urls.post_pinned(destination, b"{}", {"Content-Type": "application/json"}, deadline=10)
    assert answer.status == 204, tls_receiver.errors
    assert tls_receiver.names == [SNI_NAME, SNI_NAME]
    assert tls_receiver.hosts == [f"{SNI_NAME}:{tls_receiver.port}"]
    assert resolver.asked == [SNI_NAME]  # one lookup, by the check; the connection asked no name
