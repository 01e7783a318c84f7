"""Amazon SNS HTTP(S) subscriptions: message signature checks and subscription confirmation.

SNS signs every message it POSTs (``SignatureVersion`` 1: RSA SHA1, 2: RSA SHA256) with the
certificate at ``SigningCertURL``. A message is trusted only when its topic is allow-listed,
that URL is HTTPS on ``sns.<region of the topic>.amazonaws.com``, and the signature checks out
against the certificate found there. ``SubscribeURL`` is visited under the same host rule, so a
forged confirmation cannot make the functions host fetch an arbitrary address.

Raw message delivery is refused: SNS does not sign raw bodies, so nothing would prove where
they came from. Senders that cannot sign use ``/events/s3`` with the bearer token instead.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import urllib3
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

log = logging.getLogger(__name__)

Fetch = Callable[[str], bytes]
"""GET a URL and return its body; raises on any failure (network, non-200)."""

MAX_CERT_BYTES = 64 * 1024
# Messages older than this are refused as replays. SNS's default HTTP delivery policy retries
# for well under a minute; custom policies can retry for up to an hour.
MAX_MESSAGE_AGE_S = 3600
MAX_CLOCK_SKEW_S = 300
MAX_CACHED_CERTS = 32
_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:([a-z0-9-]+):\d{12}:[A-Za-z0-9_.-]{1,256}$")

# The fields SNS signs, in the order it signs them (Subject only when present).
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
MESSAGE_TYPES = frozenset(_SIGNED_FIELDS)
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


class SnsRejected(ValueError):
    """The message must not be trusted (HTTP 403)."""


class SnsMalformed(ValueError):
    """The body is not an SNS message this endpoint understands (HTTP 400)."""


class SnsUnavailable(RuntimeError):
    """The signing certificate could not be fetched; SNS should retry (HTTP 503)."""


def fetch_url(url: str, *, timeout: float = 10, max_bytes: int = MAX_CERT_BYTES,
              http: urllib3.PoolManager | None = None) -> bytes:
    """The default ``Fetch``: one HTTPS GET (TLS verified against the system's CAs), no
    redirects, a size cap. ``http``: the connection pool to use (tests pass one that trusts
    their own CA)."""
    response = (http.request if http else urllib3.request)(
        "GET", url, timeout=timeout, retries=urllib3.Retry(2, redirect=0), preload_content=False, redirect=False)
    try:
        if response.status != 200:
            raise OSError(f"GET {url}: HTTP {response.status}")
        body = response.read(max_bytes + 1)
    finally:
        response.release_conn()
    if len(body) > max_bytes:
        raise OSError(f"GET {url}: body over {max_bytes} bytes")
    return body


def topic_region(topic_arn: str) -> str:
    match = _TOPIC_ARN.match(topic_arn)
    if not match:
        raise SnsMalformed(f"not an SNS topic ARN: {topic_arn!r}")
    return match.group(1)


def check_sns_url(url: Any, region: str, what: str) -> str:
    """``url`` if it is HTTPS on ``sns.<region>.amazonaws.com``; else SnsRejected."""
    if not isinstance(url, str):
        raise SnsMalformed(f"{what} missing")
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.hostname != f"sns.{region}.amazonaws.com" or parts.username or parts.port:
        raise SnsRejected(f"{what} {url!r} is not https://sns.{region}.amazonaws.com/")
    return url


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The canonical text SNS signs for this message type."""
    fields = _SIGNED_FIELDS.get(message.get("Type"))  # type: ignore[arg-type]
    if fields is None:
        raise SnsMalformed(f"unknown SNS message type {message.get('Type')!r}")
    out = []
    for name in fields:
        if name not in message:
            if name == "Subject":
                continue
            raise SnsMalformed(f"SNS {message['Type']} without {name}")
        value = message[name]
        if not isinstance(value, str):
            raise SnsMalformed(f"SNS field {name} is not a string")
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode()


class SnsVerifier:
    """Checks SNS messages for one set of allowed topics; caches signing certificates by URL."""

    def __init__(self, allowed_topics: list[str] | tuple[str, ...], fetch: Fetch = fetch_url, *,
                 max_age_s: float = MAX_MESSAGE_AGE_S) -> None:
        self.allowed_topics = frozenset(allowed_topics)
        self.fetch = fetch
        self.max_age_s = max_age_s
        self._certs: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def verify(self, message: Mapping[str, Any]) -> None:
        """Raise SnsRejected / SnsMalformed / SnsUnavailable unless ``message`` is trusted."""
        topic = message.get("TopicArn")
        if not isinstance(topic, str):
            raise SnsMalformed("SNS message without TopicArn")
        if topic not in self.allowed_topics:
            # Checked before any fetch: an unknown topic never makes us reach out.
            raise SnsRejected(f"topic {topic} is not in the allow-list")
        region = topic_region(topic)
        self._check_timestamp(message.get("Timestamp"))
        version = message.get("SignatureVersion")
        if version not in _HASHES:
            raise SnsRejected(f"unsupported SignatureVersion {version!r}")
        cert_url = check_sns_url(message.get("SigningCertURL"), region, "SigningCertURL")
        try:
            signature = base64.b64decode(message.get("Signature") or "", validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise SnsRejected("Signature is not base64") from exc
        data = string_to_sign(message)
        key = self._certificate(cert_url).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SnsRejected("signing certificate does not hold an RSA key")
        try:
            key.verify(signature, data, padding.PKCS1v15(), _HASHES[version]())
        except InvalidSignature as exc:
            raise SnsRejected("signature does not match") from exc

    def _check_timestamp(self, value: Any) -> None:
        """Refuse replays: a signed message stays valid forever, so its (signed) Timestamp must be
        recent. Checked before any certificate fetch; the signature check then proves it."""
        try:
            sent = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError as exc:
            raise SnsMalformed(f"Timestamp {value!r} is not an ISO 8601 time") from exc
        if sent.tzinfo is None:
            raise SnsMalformed(f"Timestamp {value!r} has no time zone")
        age = (dt.datetime.now(dt.UTC) - sent).total_seconds()
        if age > self.max_age_s or age < -MAX_CLOCK_SKEW_S:
            raise SnsRejected(f"message sent {age:.0f} s ago: outside the {self.max_age_s:.0f} s window")

    def confirm(self, message: Mapping[str, Any]) -> None:
        """Confirm a (verified) SubscriptionConfirmation by visiting its SubscribeURL."""
        region = topic_region(str(message.get("TopicArn")))
        url = check_sns_url(message.get("SubscribeURL"), region, "SubscribeURL")
        try:
            self.fetch(url)
        except Exception as exc:
            raise SnsUnavailable(f"could not confirm the subscription: {exc}") from exc
        log.info("confirmed SNS subscription to %s", message.get("TopicArn"))

    def _certificate(self, url: str) -> x509.Certificate:
        with self._lock:
            cert = self._certs.get(url)
        if cert is None:
            try:
                pem = self.fetch(url)
            except Exception as exc:
                raise SnsUnavailable(f"could not fetch the signing certificate {url}: {exc}") from exc
            try:
                cert = x509.load_pem_x509_certificate(pem)
            except ValueError as exc:
                raise SnsRejected(f"{url} is not a PEM certificate") from exc
            with self._lock:
                if len(self._certs) >= MAX_CACHED_CERTS:
                    self._certs.pop(next(iter(self._certs)))
                self._certs[url] = cert
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            with self._lock:
                self._certs.pop(url, None)  # AWS rotates certificates under new URLs
            raise SnsRejected(f"signing certificate {url} is not valid now")
        return cert
