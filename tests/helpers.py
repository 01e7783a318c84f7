"""Plain helpers shared by test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from pathlib import Path

from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bucketbrush.credentials import CredentialsReport, read_credentials, trust_anchors
from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.manifest import Manifest, Output
from bucketbrush.routing import all_queues, redis_key
from bucketbrush.samples import landscape
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket

EVENTS = Path(__file__).parent / "events"


def png_bytes(image: Image.Image | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    (image or landscape(128, 96)).save(buf, fmt)
    return buf.getvalue()


def wait_final(bucket: Bucket, job_id: str, timeout: float = 60) -> Manifest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifest = bucket.read_manifest(job_id)
        if manifest is not None and manifest.is_final:
            return manifest
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not final after {timeout}s: {bucket.read_manifest(job_id)}")


def drop(bucket: Bucket, key: str, body: bytes, **kwargs: object) -> str:
    """Put an object as a person or script would; return the job id it will produce."""
    put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=body, **kwargs)
    ref = ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'), version_id=put.get("VersionId"))
    return job_id_for(ref)


def flush_pipeline(bucket: Bucket, timeout: float = 60) -> Manifest:
    """Positive evidence that everything handed to the stack before now has been handled: a
    canary upload goes through the event source (which works in order), so once its manifest
    is final any event before it has been handled; then every job queue (one per capability
    and priority, bucketbrush/routing.py) is empty and no runner holds an unacked message, so
    every job enqueued before it has run (and any retry of it been scheduled: retries wait in
    the delay queues, ``.DQ``, which are not waited for)."""
    import redis

    key = f"inbox/filter/canary/{uuid.uuid4().hex}.png"
    job_id = drop(bucket, key, png_bytes(landscape(16, 12)), Metadata={"style": "sepia"})
    manifest = wait_final(bucket, job_id, timeout)
    assert manifest.status == "succeeded", manifest.error
    settings = bucket.settings
    client = redis.Redis.from_url(settings.redis_url)
    acks = f"{settings.broker_namespace}:__acks__.*"
    deadline = time.monotonic() + timeout
    while (any(client.llen(redis_key(settings, q)) for q in all_queues(settings))
           or any(client.scard(k) for k in client.scan_iter(acks) if not k.endswith(b".DQ"))):
        assert time.monotonic() < deadline, "the job queues did not drain"
        time.sleep(0.05)
    return manifest


def check_outputs(bucket: Bucket, manifest: Manifest) -> list[Image.Image]:
    """Every output the manifest lists, read back and checked against its recorded size and
    hash (of the signed bytes) and its Content Credentials (check_credentials)."""
    images = []
    for out in manifest.outputs:
        data = bucket.s3.get_object(Bucket=bucket.name, Key=out.key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == out.sha256
        assert len(data) == out.bytes
        check_credentials(bucket, manifest, out, data)
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.size == (out.width, out.height)
        images.append(image)
    return images


def delayed_job_ids(settings: Settings) -> set[str]:
    """Job ids of the messages waiting in Dramatiq's delay queue (retries not yet due)."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    raw = [m for q in all_queues(settings) for m in client.hvals(f"{redis_key(settings, q)}.DQ.msgs")]
    return {json.loads(m)["args"][0]["job_id"] for m in raw}


def check_credentials(bucket: Bucket, manifest: Manifest, out: Output, data: bytes) -> CredentialsReport:
    """The output's C2PA manifest, read with the C2PA reader: trusted (the stack's development
    CA), with the recipe's actions and digital source type from the table (gpu_runner/provenance.py),
    the job, and the input as the parent ingredient."""
    from gpu_runner.provenance import made_by
    from gpu_runner.recipes import get_recipe
    from gpu_runner.recipes.base import RecipeResult

    report = read_credentials(data, out.content_type, anchors=trust_anchors(bucket.settings))
    assert report is not None, f"{out.key} carries no Content Credentials"
    assert report.validation_state == "Trusted", report.failures
    assert out.content_credentials is not None and out.content_credentials.signed
    assert out.content_credentials.validation_state == "Trusted"
    recipe = get_recipe(manifest.recipe, testing=True)
    made = made_by(manifest.recipe, recipe.params.model_construct(**manifest.params), RecipeResult(artifacts=[]))
    opened = ["c2pa.opened"] if recipe.needs_input else []
    assert [a["action"] for a in report.actions] == opened + list(made.actions)
    assert report.digital_source_types == ([made.source_type] if made.source_type else [])
    assert out.content_credentials.digital_source_type == made.source_type
    assert report.job["job_id"] == manifest.job_id and report.job["recipe"] == manifest.recipe
    if recipe.needs_input:
        [ingredient] = [i for i in report.ingredients if i["relationship"] == "parentOf"]
        assert len(ingredient["sha256"]) == 64
    return report


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric_value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def signing_chain(*, expired: bool = False, eku: tuple[str, ...] = ("emailProtection",),
                  digital_signature: bool = True) -> tuple[bytes, bytes, bytes]:
    """(CA, chain, key) PEM for a C2PA signer issued by a fresh test CA, with chosen flaws: an
    expired end certificate, other extended key usages (``()``: none), no digitalSignature."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    days = datetime.timedelta(days=1)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, public: object, start: datetime.datetime, end: datetime.datetime,
             *extensions: tuple[object, bool]) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    def usage(**on: bool) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
                 "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
        return x509.KeyUsage(**(dict.fromkeys(names, False) | on))

    ca = cert("test CA", ca_key.public_key(), now - 800 * days, now + 800 * days,
              (x509.BasicConstraints(ca=True, path_length=0), True), (usage(key_cert_sign=True, crl_sign=True), True))
    extensions = [(x509.BasicConstraints(ca=False, path_length=None), True),
                  (usage(digital_signature=digital_signature), True),
                  (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)]
    if eku:
        oids = {"emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
                "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
                "documentSigning": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")}
        extensions.append((x509.ExtendedKeyUsage([oids[name] for name in eku]), False))
    start, end = (now - 400 * days, now - 30 * days) if expired else (now - days / 24, now + 365 * days)
    signer = cert("test signer", key.public_key(), start, end, *extensions)
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), signer.public_bytes(pem) + ca.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
