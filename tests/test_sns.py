"""SNS signing certificates: validity dates, and the real HTTPS fetch (functions/sns.py).

AWS's certificate host cannot be reached here, so a local HTTPS server plays it: it holds a
TLS certificate for ``sns.us-east-1.amazonaws.com`` from a CA made for the test, and the
fetcher's connection pool sends that host's connections to it while verifying TLS against
the URL's host name, exactly as it would with DNS pointing there. Everything after the
connection (TLS, the host name check, status, redirects, size cap, the PEM, the signature)
is the production code's.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from functions.sns import SnsRejected, SnsUnavailable, SnsVerifier, fetch_url

pytestmark = pytest.mark.e2e  # a local HTTPS server

TOPIC = "arn:aws:sns:us-east-1:123456789012:bucketbrush-events"
HOST = "sns.us-east-1.amazonaws.com"
CERT_PATH = "/SimpleNotificationService-0000test.pem"
NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate(key: rsa.RSAPrivateKey, *, valid: tuple[dt.timedelta, dt.timedelta] = (
        dt.timedelta(days=-1), dt.timedelta(days=1)), issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None = None,
        dns: str | None = None, ca: bool = False, cn: str = "sns.amazonaws.com") -> x509.Certificate:
    issuer_name, issuer_key = issuer or (_name(cn), key)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW + valid[0]).not_valid_after(NOW + valid[1])
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def signed(key: rsa.RSAPrivateKey, cert_url: str = f"https://{HOST}{CERT_PATH}") -> dict:
    """A Notification signed as SNS signs (SignatureVersion 2), from the SNS docs."""
    message = {"Type": "Notification", "MessageId": "5c1b1a4e-0000-4000-8000-000000000002", "TopicArn": TOPIC,
               "Message": json.dumps({"Records": []}),
               "Timestamp": NOW.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    text = "".join(f"{f}\n{message[f]}\n" for f in ("Message", "MessageId", "Timestamp", "TopicArn", "Type"))
    signature = key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())
    return {**message, "SignatureVersion": "2", "SigningCertURL": cert_url,
            "Signature": base64.b64encode(signature).decode()}


# -- validity dates (no network) --------------------------------------------------------------

@pytest.mark.parametrize("valid", [(dt.timedelta(days=-30), dt.timedelta(hours=-1)),  # expired
                                   (dt.timedelta(hours=1), dt.timedelta(days=30))])  # not yet valid
def test_a_certificate_outside_its_validity_dates_is_refused(valid):
    key = _key()
    fetched = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return pem(certificate(key, valid=valid))

    verifier = SnsVerifier([TOPIC], fetch)
    for _ in range(2):
        with pytest.raises(SnsRejected, match="is not valid now"):
            verifier.verify(signed(key))
    assert len(fetched) == 2  # never cached: fetched again (AWS rotates under new URLs)
    # The same message under a valid certificate passes: only the dates were wrong.
    SnsVerifier([TOPIC], lambda url: pem(certificate(key))).verify(signed(key))


# -- the real fetch, over HTTPS from a local server -------------------------------------------

class AwsHost:
    """A local HTTPS server with a TLS certificate for ``tls_name`` (from ``ca``), serving
    ``files``; it records every path asked for."""

    def __init__(self, tmp: Path, ca: tuple[x509.Certificate, rsa.RSAPrivateKey], tls_name: str,
                 files: dict[str, tuple[int, bytes]]) -> None:
        tls_key = _key()
        tls_cert = certificate(tls_key, issuer=(ca[0].subject, ca[1]), dns=tls_name, cn=tls_name)
        chain = tmp / f"{tls_name}.pem"
        chain.write_bytes(pem(tls_cert) + tls_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)
        self.paths: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                host.paths.append(self.path)
                status, body = files.get(self.path, (404, b"not found"))
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", f"https://{HOST}{CERT_PATH}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]


@contextlib.contextmanager
def serving(host: AwsHost) -> Iterator[AwsHost]:
    thread = threading.Thread(target=host.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        host.server.shutdown()
        host.server.server_close()


class PointedAt(urllib3.PoolManager):
    """Connections for any host go to 127.0.0.1:``port``; TLS is verified against the URL's
    host name and ``ca_file`` (as if DNS sent that host here)."""

    def __init__(self, port: int, ca_file: Path) -> None:
        super().__init__()
        self.port, self.ca_file = port, str(ca_file)

    def connection_from_host(self, host, port=None, scheme="http", pool_kwargs=None):  # noqa: ANN001, ANN201
        assert scheme == "https", scheme  # fetch_url is only ever given https URLs here
        return urllib3.HTTPSConnectionPool("127.0.0.1", self.port, cert_reqs="CERT_REQUIRED", ca_certs=self.ca_file,
                                           server_hostname=host, assert_hostname=host)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> tuple[x509.Certificate, rsa.RSAPrivateKey, Path]:
    key = _key()
    cert = certificate(key, ca=True, cn="bucketbrush test CA", valid=(dt.timedelta(days=-1), dt.timedelta(days=2)))
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(pem(cert))
    return cert, key, path


def test_the_certificate_is_fetched_over_https_and_checked(ca, tmp_path):
    signer = _key()
    files = {CERT_PATH: (200, pem(certificate(signer))), "/moved.pem": (302, b""),
             "/huge.pem": (200, b"x" * (64 * 1024 + 1))}
    with serving(AwsHost(tmp_path, ca[:2], HOST, files)) as host:
        verifier = SnsVerifier([TOPIC], functools.partial(fetch_url, http=PointedAt(host.port, ca[2])))
        verifier.verify(signed(signer))
        verifier.verify(signed(signer))
        assert host.paths == [CERT_PATH]  # fetched for real once, then cached
        # A certificate URL off the AWS host is refused before any request is made.
        for forged in (f"https://{HOST}.evil.example{CERT_PATH}", f"https://evil.example{CERT_PATH}",
                       f"http://{HOST}{CERT_PATH}", f"https://{HOST}:8443{CERT_PATH}"):
            with pytest.raises(SnsRejected, match="is not https://sns.us-east-1.amazonaws.com/"):
                verifier.verify(signed(signer, forged))
        assert host.paths == [CERT_PATH]
        # A redirect is not followed; a body over the cap is not read: SNS is asked to retry.
        for path in ("/moved.pem", "/huge.pem"):
            with pytest.raises(SnsUnavailable, match="could not fetch the signing certificate"):
                verifier.verify(signed(signer, f"https://{HOST}{path}"))
        assert host.paths == [CERT_PATH, "/moved.pem", "/huge.pem"]


def test_a_host_without_a_certificate_for_the_aws_name_is_not_trusted(ca, tmp_path):
    # DNS (or a proxy) sends sns.us-east-1.amazonaws.com to a server that can only show a
    # TLS certificate for another name: TLS fails, nothing is read from it.
    signer = _key()
    with serving(AwsHost(tmp_path, ca[:2], "evil.example", {CERT_PATH: (200, pem(certificate(signer)))})) as host:
        verifier = SnsVerifier([TOPIC], functools.partial(fetch_url, http=PointedAt(host.port, ca[2])))
        with pytest.raises(SnsUnavailable, match="could not fetch the signing certificate"):
            verifier.verify(signed(signer))
        assert host.paths == []
