"""Content Credentials (C2PA): the signing key and certificates, the local development CA,
signing bytes with a manifest, reading one back, and the plain XMP DigitalSourceType.

Signing and reading use ``c2pa-python`` (the Content Authenticity Initiative's bindings, the
``credentials`` extra), imported only when used: a process that never signs nor verifies does
not need it. Where the package is missing and signing is on, the runner refuses to start
(:func:`require_c2pa`): outputs are never shipped unsigned without ``content_credentials=off``.

Key material comes from settings (``c2pa_signing_key``, ``c2pa_signing_certs``: PEM text or a
file path each) or, when neither is set, from the development signer ``bucketbrush up`` makes
under ``<state_dir>/credentials/``. Key text is never logged nor put in an error message.
"""

from __future__ import annotations

import datetime
import io
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bucketbrush.errors import ConfigError

if TYPE_CHECKING:
    from bucketbrush.settings import Settings

# IPTC's digital source type vocabulary (https://cv.iptc.org/newscodes/digitalsourcetype/).
IPTC_DST = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = IPTC_DST + "trainedAlgorithmicMedia"
COMPOSITE = IPTC_DST + "compositeWithTrainedAlgorithmicMedia"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
# Our own assertion (reverse-domain label, as C2PA asks of custom assertions).
JOB_ASSERTION = "org.bucketbrush.job"
INSTALL_HINT = ("install the `credentials` extra (pip install 'bucketbrush[credentials]'), "
                "or set BUCKETBRUSH_CONTENT_CREDENTIALS=off to write outputs without Content Credentials")
DEV_DIR = "credentials"
DEV_CA, DEV_CERTS, DEV_KEY = "dev-ca.pem", "signer-chain.pem", "signer-key.pem"


def require_c2pa() -> Any:
    """The ``c2pa`` module, or a ConfigError that says how to get it (or turn signing off)."""
    try:
        import c2pa
    except ImportError as exc:
        raise ConfigError(f"content credentials are on but c2pa-python is not installed: {INSTALL_HINT}") from exc
    return c2pa


def _pem_or_file(value: str, what: str) -> bytes:
    """PEM text as given, or the contents of the file it names (the value is never echoed)."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read the file it names ({exc.strerror})") from exc


@dataclass(frozen=True)
class SigningMaterial:
    """A private key and its certificate chain (PEM, signing certificate first)."""

    key_pem: bytes = field(repr=False)
    certs_pem: bytes
    alg: str
    source: str  # "settings" or the development signer's folder
    tsa_url: str | None = None

    @property
    def subject(self) -> str:
        from cryptography import x509

        cert = x509.load_pem_x509_certificates(self.certs_pem)[0]
        return cert.subject.rfc4514_string()


def algorithm_for(key_pem: bytes) -> str:
    """The C2PA signing algorithm for a PEM private key: es256/es384/es512, ps256 or ed25519."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("c2pa_signing_key is not an unencrypted PEM private key") from exc
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in curves:
            raise ConfigError(f"c2pa_signing_key: EC curve {key.curve.name} is not one C2PA signs with")
        return curves[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise ConfigError(f"c2pa_signing_key: {type(key).__name__} keys are not supported (use EC P-256)")


def dev_dir(state_dir: Path) -> Path:
    return Path(state_dir).resolve() / DEV_DIR


def signing_material(settings: Settings) -> SigningMaterial | None:
    """The configured key and chain, else the development signer of the state dir, else None."""
    key, certs = settings.c2pa_signing_key, settings.c2pa_signing_certs
    if key is not None or certs:
        if key is None or not certs:
            raise ConfigError("set both c2pa_signing_key and c2pa_signing_certs (PEM text or file paths)")
        key_pem = _pem_or_file(key.get_secret_value(), "c2pa_signing_key")
        certs_pem = _pem_or_file(certs, "c2pa_signing_certs")
        source = "settings"
    else:
        folder = dev_dir(settings.state_dir)
        if not (folder / DEV_KEY).exists():
            return None
        key_pem, certs_pem, source = (folder / DEV_KEY).read_bytes(), (folder / DEV_CERTS).read_bytes(), str(folder)
    return SigningMaterial(key_pem, certs_pem, algorithm_for(key_pem), source, settings.c2pa_tsa_url or None)


def trust_anchors(settings: Settings) -> str | None:
    """PEM trust anchors for validation: ``c2pa_trust_anchors``, plus the local development CA
    when the state dir has one. None: only the library's own list."""
    parts = []
    if settings.c2pa_trust_anchors:
        parts.append(_pem_or_file(settings.c2pa_trust_anchors, "c2pa_trust_anchors").decode())
    dev_ca = dev_dir(settings.state_dir) / DEV_CA
    if dev_ca.exists():
        parts.append(dev_ca.read_text())
    return "\n".join(parts) or None


# -- the local development CA (``bucketbrush up``) ----------------------------------------------

def ensure_dev_credentials(state_dir: Path) -> tuple[Path, bool]:
    """A development CA and a signing certificate it issued, under ``<state_dir>/credentials/``
    (owner-only files); made on the first call. Returns (folder, made now). The CA's own key is
    not kept: nothing else can be issued under it."""
    folder = dev_dir(state_dir)
    if (folder / DEV_KEY).exists() and (folder / DEV_CERTS).exists() and (folder / DEV_CA).exists():
        return folder, False
    ca_pem, chain_pem, key_pem = make_dev_ca()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    for name, data in ((DEV_CA, ca_pem), (DEV_CERTS, chain_pem), (DEV_KEY, key_pem)):
        write_private(folder / name, data)
    return folder, True


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to an owner-only (0600) file."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def make_dev_ca(common_name: str = "bucketbrush development signer") -> tuple[bytes, bytes, bytes]:
    """(CA certificate, signer chain, signer key) as PEM: an EC P-256 CA and an end certificate
    with what C2PA validators require: key usage digitalSignature, extended key usage
    emailProtection, subject and authority key identifiers."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bucketbrush local development")])

    def usage(**on: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                               "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
        return x509.KeyUsage(**(flags | on))

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("bucketbrush local development CA"))
          .issuer_name(name("bucketbrush local development CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem)
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca_pem, cert.public_bytes(pem) + ca_pem, key_pem


# -- signing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parent:
    """The input an output was made from: a C2PA ``parentOf`` ingredient (its own Content
    Credentials, if any, stay in the chain)."""

    data: bytes = field(repr=False)
    mime: str
    title: str
    sha256: str


class ContentSigner:
    """Signs bytes with a C2PA manifest, embedded in the file (PNG, JPEG, WebP, MP4, ...)."""

    def __init__(self, material: SigningMaterial, anchors: str | None = None) -> None:
        self.c2pa = require_c2pa()
        self.material = material
        self.anchors = anchors
        self.signer_name = material.subject
        # Thumbnails off: a thumbnail JPEG per output (and per ingredient) would add ~30 kB
        # and ~40 ms each; the asset itself is the picture.
        self._build_settings = {"builder": {"thumbnail": {"enabled": False}}}
        self.supported = set(self.c2pa.Builder.get_supported_mime_types())

    def sign(self, data: bytes, mime: str, definition: dict[str, Any], parent: Parent | None = None,
             others: list[Parent] | None = None) -> bytes:
        """``data`` with a signed manifest made from ``definition`` (a C2PA manifest
        definition: claim_generator_info, title, assertions...). ``parent`` (label ``input``)
        and ``others`` (``inputTo``: a mask, keypoints) are ingredients: from their bytes when
        the library reads the format (keeping their own chain), else from their description."""
        c2pa = self.c2pa
        definition = dict(definition)
        ingredients = [(p, "parentOf", "input") for p in ([parent] if parent else [])]
        ingredients += [(p, "inputTo", f"input-{i}") for i, p in enumerate(others or [], 1)]
        streamed = []
        for item, relationship, label in ingredients:
            ingredient = {"title": item.title, "format": item.mime, "relationship": relationship, "label": label,
                          "metadata": {"org.bucketbrush.sha256": item.sha256, "org.bucketbrush.bytes": len(item.data)}}
            if item.mime in self.supported:
                streamed.append((ingredient, item))
            else:
                definition["ingredients"] = [*definition.get("ingredients", []), ingredient]
        m = self.material
        info = c2pa.C2paSignerInfo(m.alg, m.certs_pem, m.key_pem, m.tsa_url)
        with (c2pa.Context.from_dict(self._build_settings) as context, c2pa.Signer.from_info(info) as signer,
              c2pa.Builder(definition, context) as builder):
            for ingredient, item in streamed:
                builder.add_ingredient(ingredient, item.mime, io.BytesIO(item.data))
            out = io.BytesIO()
            builder.sign(signer, mime, io.BytesIO(data), out)
        return out.getvalue()


    def self_test(self) -> None:
        """Sign a tiny PNG and read it back, as a job's output would be, or a ConfigError that
        names the settings and says what is wrong (a key that is not the certificate's, an
        expired certificate, a missing key usage...): a runner checks this before it takes jobs.
        The timestamp authority is not asked (a network call at start; when it does not answer
        later, jobs fail with ``signing_failed``)."""
        m = self.material
        problems = certificate_problems(m)
        if not problems:
            from PIL import Image

            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (200, 100, 50)).save(buf, "PNG")
            definition = {"claim_generator_info": [{"name": "bucketbrush self-test"}], "title": "self-test.png",
                          "format": "image/png", "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [
                              {"action": "c2pa.created", "digitalSourceType": IPTC_DST + "algorithmicMedia"}]}}]}
            try:
                signed = ContentSigner(replace(m, tsa_url=None), self.anchors).sign(
                    buf.getvalue(), "image/png", definition)
                report = read_credentials(signed, "image/png", anchors=self.anchors)
            except Exception as exc:  # the library's words; never the key
                problems.append(f"a test signature failed ({type(exc).__name__}: {' '.join(str(exc).split())})")
            else:
                if report is None or report.validation_state not in ("Valid", "Trusted"):
                    codes = "; ".join(f["code"] for f in report.failures) if report else "no manifest"
                    problems.append(f"a test signature did not validate ({codes})")
        if problems:
            where = ("BUCKETBRUSH_C2PA_SIGNING_KEY and BUCKETBRUSH_C2PA_SIGNING_CERTS" if m.source == "settings"
                     else f"the development signer in {m.source} (delete the folder and run `bucketbrush up` "
                     "for a new one)")
            raise ConfigError(f"content credentials cannot be signed with {where} (certificate {m.subject}): "
                              + "; ".join(problems)
                              + ". Fix them (docs/content-credentials.md) or set BUCKETBRUSH_CONTENT_CREDENTIALS=off")


def certificate_problems(material: SigningMaterial, now: datetime.datetime | None = None) -> list[str]:
    """What makes the signing certificate unusable for C2PA, in words (empty: nothing found):
    a key that is not the certificate's, a certificate outside its validity period, no
    ``digitalSignature`` key usage, no extended key usage (or ``anyExtendedKeyUsage``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert = x509.load_pem_x509_certificates(material.certs_pem)[0]
    key = serialization.load_pem_private_key(material.key_pem, password=None)
    raw = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    problems = []
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        problems.append("the private key is not the signing certificate's (the first in the chain): "
                        "their public keys differ")
    now = now or datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        problems.append(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if now < cert.not_valid_before_utc:
        problems.append(f"the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            problems.append("its key usage lacks digitalSignature")
    except x509.ExtensionNotFound:
        problems.append("it has no key usage extension (C2PA needs digitalSignature)")
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
            problems.append("its extended key usage is anyExtendedKeyUsage, which C2PA refuses")
    except x509.ExtensionNotFound:
        problems.append("it has no extended key usage (C2PA needs one, such as emailProtection)")
    return problems


# -- reading --------------------------------------------------------------------------------

@dataclass
class CredentialsReport:
    """What a file's Content Credentials say (the active manifest), for people and the JSON manifest."""

    validation_state: str  # Trusted, Valid or Invalid (c2pa's words)
    signer: str | None
    issuer: str | None
    signed_at: str | None
    claim_generator: str | None
    actions: list[dict[str, Any]]
    digital_source_types: list[str]
    ingredients: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    job: dict[str, Any] | None
    manifests: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_credentials(data: bytes, mime: str | None = None, *, anchors: str | None = None) -> CredentialsReport | None:
    """The Content Credentials embedded in ``data``; None when it carries none (or is of a type
    C2PA cannot carry, e.g. JSON). ``anchors``: PEM trust anchors (a signer chaining to one is
    ``Trusted``)."""
    c2pa = require_c2pa()
    config: dict[str, Any] = {"verify": {"verify_trust": True}}
    if anchors:
        config["trust"] = {"trust_anchors": anchors}
    with c2pa.Context.from_dict(config) as context:
        try:
            reader = c2pa.Reader(mime or None, io.BytesIO(data), None, context)
        except (c2pa.C2paError.ManifestNotFound, c2pa.C2paError.NotSupported):
            return None
        with reader:
            store = json.loads(reader.json())
    active = store.get("manifests", {}).get(store.get("active_manifest"), {})
    actions = [a for assertion in active.get("assertions", []) if assertion.get("label", "").startswith("c2pa.actions")
               for a in assertion.get("data", {}).get("actions", [])]
    job = next((a.get("data") for a in active.get("assertions", []) if a.get("label") == JOB_ASSERTION), None)
    results = store.get("validation_results", {}).get("activeManifest", {})
    sig = active.get("signature_info", {})
    generator = (active.get("claim_generator_info") or [{}])[0]
    ingredients = []
    for ing in active.get("ingredients", []):
        parent_manifest = store.get("manifests", {}).get(ing.get("active_manifest"), {})
        ingredients.append({
            "title": ing.get("title"), "format": ing.get("format"), "relationship": ing.get("relationship"),
            "sha256": (ing.get("metadata") or {}).get("org.bucketbrush.sha256"),
            "content_credentials": bool(ing.get("active_manifest")),
            "signer": (parent_manifest.get("signature_info") or {}).get("common_name"),
            "job_id": next((a.get("data", {}).get("job_id") for a in parent_manifest.get("assertions", [])
                            if a.get("label") == JOB_ASSERTION), None),
        })
    return CredentialsReport(
        validation_state=store.get("validation_state") or "Invalid",
        signer=sig.get("common_name"), issuer=sig.get("issuer"), signed_at=sig.get("time"),
        claim_generator=" ".join(str(generator[k]) for k in ("name", "version") if generator.get(k)) or None,
        actions=actions,
        digital_source_types=sorted({a["digitalSourceType"] for a in actions if a.get("digitalSourceType")}),
        ingredients=ingredients,
        failures=results.get("failure", []),
        job=job,
        manifests=len(store.get("manifests", {})),
    )


# -- plain metadata (XMP) for readers without C2PA ----------------------------------------------

def xmp_packet(digital_source_type: str) -> str:
    """An XMP packet with IPTC's ``Iptc4xmpExt:DigitalSourceType`` (what platforms without a
    C2PA reader look at)."""
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="{IPTC_EXT_NS}" '
            f'Iptc4xmpExt:DigitalSourceType="{digital_source_type}"/>'
            '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def describe(report: CredentialsReport | None) -> list[str]:
    """``bucketbrush verify``'s lines for people: verdict, signer, actions, ingredients, failures."""
    if report is None:
        return ["content credentials: none (no C2PA manifest in this file)"]
    verdict = {"Trusted": "the signature is valid and the signer chains to a trust anchor",
               "Valid": "the signature is valid; the signer is not among the trust anchors",
               "Invalid": "INVALID: the file or its manifest does not match the signature"}
    lines = [f"content credentials: {report.validation_state} ({verdict.get(report.validation_state, '?')})",
             f"signed by: {report.signer or '?'} (issuer {report.issuer or '?'})"
             + (f" at {report.signed_at}" if report.signed_at else ""),
             f"made with: {report.claim_generator or '?'}"]
    if report.digital_source_types:
        lines.append("digital source type: " + ", ".join(t.rsplit("/", 1)[-1] for t in report.digital_source_types))
    else:
        lines.append("digital source type: none (not made by a generative model)")
    lines.append("actions:")
    for action in report.actions:
        what = action.get("description") or ""
        lines.append(f"  {action.get('action')}" + (f": {what}" if what else ""))
    if report.job:
        model = report.job.get("model") or {}
        lines.append(f"job: {report.job.get('job_id')} (recipe {report.job.get('recipe')}"
                     + (f", model {model.get('id')}" if model.get("id") else "") + ")")
    lines.append("ingredients:" if report.ingredients else "ingredients: none")
    for ing in report.ingredients:
        chain = (f", itself signed by {ing['signer']}" + (f" (job {ing['job_id']})" if ing.get("job_id") else "")
                 if ing["content_credentials"] else "")
        digest = f" sha256 {ing['sha256']}" if ing.get("sha256") else ""
        lines.append(f"  {ing['relationship']}: {ing['title']} ({ing['format']}){digest}{chain}")
    for failure in report.failures:
        lines.append(f"failure: {failure.get('code')}: {failure.get('explanation', '')}")
    return lines
