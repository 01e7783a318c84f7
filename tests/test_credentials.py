"""Content Credentials without servers: the development CA, signing each output format, reading
back with the C2PA reader (and the XMP with Pillow), chains, tampering, and the off switch."""

from __future__ import annotations

import io
import stat
import struct
import zlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from PIL import Image

from bucketbrush.credentials import (
    COMPOSITE,
    DEV_CA,
    DEV_CERTS,
    DEV_KEY,
    TRAINED,
    ContentSigner,
    ensure_dev_credentials,
    make_dev_ca,
    read_credentials,
    signing_material,
    trust_anchors,
    xmp_packet,
)
from bucketbrush.errors import ConfigError, SigningFailed
from bucketbrush.samples import landscape
from bucketbrush.settings import Settings
from gpu_runner.images import encode_image
from gpu_runner.provenance import RECIPES as TABLE
from gpu_runner.provenance import OutputSigner, Parent, made_by
from gpu_runner.recipes import RECIPES, get_recipe
from gpu_runner.recipes.base import RecipeResult
from tests.helpers import signing_chain


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose state dir holds a fresh development CA and signer."""
    ensure_dev_credentials(tmp_path)
    return Settings(state_dir=tmp_path, _env_file=None)


@pytest.fixture
def signer(settings: Settings) -> OutputSigner:
    made = OutputSigner.from_settings(settings)
    assert made is not None
    return made


def sign(signer: OutputSigner, recipe: str, data: bytes, mime: str, parent: Parent | None = None,
         job_id: str = "job-1", params: dict | None = None) -> tuple[bytes, object]:
    r = get_recipe(recipe)
    p = r.params.model_validate(params or {})
    result = RecipeResult(artifacts=[], model={"id": "tiny", "weights": "sha256:abc", "license": "Apache-2.0"})
    return signer.sign(data, mime, title=f"out.{mime.split('/')[1]}", job_id=job_id, recipe=recipe, params=p,
                       result=result, made=made_by(recipe, p, result), parent=parent, input_key="inbox/x/in.png")


def png(image: Image.Image | None = None) -> bytes:
    return encode_image(image or landscape(64, 48), "png")[0]


def test_dev_ca_has_what_c2pa_requires_in_owner_only_files(tmp_path: Path) -> None:
    folder, made = ensure_dev_credentials(tmp_path)
    assert made and ensure_dev_credentials(tmp_path) == (folder, False)  # kept across `up`s
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in (DEV_CA, DEV_CERTS, DEV_KEY):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    cert, ca = x509.load_pem_x509_certificates((folder / DEV_CERTS).read_bytes())
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ski
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert (folder / DEV_CA).read_bytes().strip() in (folder / DEV_CERTS).read_bytes()


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_each_image_format_carries_a_trusted_manifest_and_xmp_source_type(signer, fmt) -> None:
    source = png()
    parent = OutputSigner.parent(source, "image/png", "inbox/img2img/in.png")
    made = made_by("img2img", None, RecipeResult(artifacts=[]))
    data, mime = encode_image(landscape(64, 48), fmt, xmp=xmp_packet(made.source_type))
    signed, creds = sign(signer, "img2img", data, mime, parent, params={"prompt": "oil"})
    assert creds.signed and creds.validation_state == "Trusted" and creds.signer == "bucketbrush development signer"
    report = read_credentials(signed, mime, anchors=signer.signer.anchors)
    assert [a["action"] for a in report.actions] == ["c2pa.opened", "c2pa.edited"]
    assert report.digital_source_types == [TRAINED]
    assert report.job["job_id"] == "job-1" and report.job["params"]["prompt"] == "oil"
    assert report.job["model"] == {"id": "tiny", "weights": "sha256:abc", "license": "Apache-2.0"}
    assert report.job["tool"]["name"] == "bucketbrush"
    [ingredient] = report.ingredients
    assert ingredient["relationship"] == "parentOf" and ingredient["sha256"] == parent.sha256
    # The plain metadata, read back with a library (Pillow's XMP reader; defusedxml parses it).
    xmp = Image.open(io.BytesIO(signed)).getxmp()
    assert xmp["xmpmeta"]["RDF"]["Description"]["DigitalSourceType"] == TRAINED


def test_without_the_ca_as_anchor_the_signature_is_valid_but_not_trusted(signer) -> None:
    signed, _ = sign(signer, "txt2img", png(), "image/png", params={"prompt": "a house"})
    report = read_credentials(signed, "image/png")
    assert report.validation_state == "Valid"
    assert "signingCredential.untrusted" in {f["code"] for f in report.failures}
    assert [a["action"] for a in report.actions] == ["c2pa.created"] and report.ingredients == []


def test_a_chain_of_two_jobs_keeps_the_first_as_the_parent_ingredient(signer) -> None:
    first, _ = sign(signer, "txt2img", png(), "image/png", job_id="job-a", params={"prompt": "a house"})
    parent = OutputSigner.parent(first, "image/png", "outputs/job-a/txt2img_0.png")
    second, creds = sign(signer, "filter", png(landscape(64, 48).rotate(90)), "image/png", parent, job_id="job-b",
                         params={"style": "noir"})
    report = read_credentials(second, "image/png", anchors=signer.signer.anchors)
    assert report.validation_state == "Trusted" and report.manifests == 2
    [ingredient] = report.ingredients
    assert ingredient["content_credentials"] and ingredient["job_id"] == "job-a"
    assert [a["action"] for a in report.actions] == ["c2pa.opened", "c2pa.filtered"]
    assert report.digital_source_types == []  # a classic filter: no AI source type


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def _png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def test_one_changed_pixel_makes_validation_fail(signer) -> None:
    image = landscape(64, 48)
    signed, _ = sign(signer, "txt2img", png(image), "image/png", params={"prompt": "a house"})
    changed = image.copy()
    changed.putpixel((10, 10), tuple(255 - v for v in changed.getpixel((10, 10))))
    # The signed file's chunks (its manifest among them) with the pixel data of the changed image.
    new_idat = [c for c in _chunks(png(changed)) if c[0] == b"IDAT"]
    chunks = _chunks(signed)
    first = next(i for i, c in enumerate(chunks) if c[0] == b"IDAT")
    tampered = _png_from_chunks([c for c in chunks[:first]] + new_idat +
                                [c for c in chunks[first:] if c[0] != b"IDAT"])
    assert Image.open(io.BytesIO(tampered)).getpixel((10, 10)) != image.getpixel((10, 10))
    report = read_credentials(tampered, "image/png", anchors=signer.signer.anchors)
    assert report.validation_state == "Invalid"
    assert "assertion.dataHash.mismatch" in {f["code"] for f in report.failures}


def test_mp4_is_signed_in_the_file(signer) -> None:
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 40, np.uint8))))
        container.mux(stream.encode())
    data = buf.getvalue()
    parent = OutputSigner.parent(data, "video/mp4", "inbox/video/in.mp4")
    signed, creds = sign(signer, "video", data, "video/mp4", parent, params={"frame_recipe": "filter",
                                                                             "style": "noir"})
    assert creds.validation_state == "Trusted"
    report = read_credentials(signed, "video/mp4", anchors=signer.signer.anchors)
    assert [a["action"] for a in report.actions] == ["c2pa.opened", "c2pa.edited", "c2pa.filtered",
                                                     "c2pa.transcoded"]
    with av.open(io.BytesIO(signed)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_json_outputs_say_why_they_are_not_signed(signer) -> None:
    data, creds = sign(signer, "annotate", b"{}", "application/json", params={"kind": "pose"})
    assert data == b"{}" and not creds.signed and "application/json" in creds.reason


def test_a_key_that_does_not_match_its_certificate_fails_signing(tmp_path: Path) -> None:
    """A job's signing errors fail it (a runner does not start with such a key, see below; this
    is the signer as a job meets it, made without the start-up self-test)."""
    _, chain, _ = make_dev_ca()
    _, _, other_key = make_dev_ca()
    settings = Settings(state_dir=tmp_path, c2pa_signing_key=other_key.decode(), c2pa_signing_certs=chain.decode(),
                        _env_file=None)
    bad = OutputSigner(ContentSigner(signing_material(settings)))
    with pytest.raises(SigningFailed) as err:
        sign(bad, "filter", png(), "image/png", params={"style": "noir"})
    assert err.value.code == "signing_failed" and "PRIVATE KEY" not in err.value.message


def test_key_and_certs_from_files_and_the_off_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = ensure_dev_credentials(tmp_path / "elsewhere")
    state = tmp_path / "state"
    monkeypatch.setenv("BUCKETBRUSH_C2PA_SIGNING_KEY", str(folder / DEV_KEY))
    monkeypatch.setenv("BUCKETBRUSH_C2PA_SIGNING_CERTS", str(folder / DEV_CERTS))
    monkeypatch.setenv("BUCKETBRUSH_C2PA_TRUST_ANCHORS", str(folder / DEV_CA))
    settings = Settings(state_dir=state, _env_file=None)
    signer = OutputSigner.from_settings(settings)
    assert signer.signer.material.source == "settings" and signer.signer.material.alg == "es256"
    assert trust_anchors(settings) == (folder / DEV_CA).read_text()
    assert str(folder / DEV_KEY) not in repr(settings) and "PRIVATE" not in repr(signer.signer.material)
    monkeypatch.setenv("BUCKETBRUSH_CONTENT_CREDENTIALS", "off")
    assert OutputSigner.from_settings(Settings(state_dir=state, _env_file=None)) is None


def test_signing_on_without_any_key_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BUCKETBRUSH_CONTENT_CREDENTIALS=off"):
        OutputSigner.from_settings(Settings(state_dir=tmp_path, _env_file=None))
    with pytest.raises(ConfigError, match="both"):
        Settings(state_dir=tmp_path, c2pa_signing_key="x", _env_file=None) and OutputSigner.from_settings(
            Settings(state_dir=tmp_path, c2pa_signing_key="x", _env_file=None))


def settings_for(tmp_path: Path, chain: tuple[bytes, bytes, bytes], key: bytes | None = None) -> Settings:
    ca, certs, own_key = chain
    return Settings(state_dir=tmp_path, c2pa_signing_key=(key or own_key).decode(), c2pa_signing_certs=certs.decode(),
                    c2pa_trust_anchors=ca.decode(), _env_file=None)


@pytest.mark.parametrize("flaw,says", [
    ("wrong_key", "the private key is not the signing certificate's (the first in the chain): their public keys "
                  "differ"),
    ("expired", "the certificate expired on "),
    ("no_eku", "it has no extended key usage (C2PA needs one, such as emailProtection)"),
    ("any_eku", "its extended key usage is anyExtendedKeyUsage, which C2PA refuses"),
    ("no_digital_signature", "its key usage lacks digitalSignature"),
    # Not in the checks by name: the test signature's read-back finds it (c2pa's own words).
    ("document_signing_only", "a test signature failed (_C2paVerify: Verify: manifest failed validation with: "
                              "failures: signingCredential.invalid: certificate missing required EKU"),
])
def test_a_signer_that_cannot_sign_refuses_to_start_and_says_why(tmp_path: Path, flaw: str, says: str) -> None:
    chain = signing_chain(expired=flaw == "expired", digital_signature=flaw != "no_digital_signature",
                          eku={"no_eku": (), "any_eku": ("any",), "document_signing_only": ("documentSigning",)}.get(
                              flaw, ("emailProtection",)))
    settings = settings_for(tmp_path, chain, key=signing_chain()[2] if flaw == "wrong_key" else None)
    with pytest.raises(ConfigError) as err:
        OutputSigner.from_settings(settings)
    message = err.value.message
    assert message.startswith("content credentials cannot be signed with BUCKETBRUSH_C2PA_SIGNING_KEY and "
                              "BUCKETBRUSH_C2PA_SIGNING_CERTS (certificate CN=test signer): "), message
    assert says in message and message.endswith("or set BUCKETBRUSH_CONTENT_CREDENTIALS=off")
    assert "PRIVATE KEY" not in message and err.value.code == "config_error"


def test_a_good_chain_passes_the_self_test_and_signs(tmp_path: Path) -> None:
    """The same certificate maker, without a flaw: the self-test is not what refuses above."""
    signer = OutputSigner.from_settings(settings_for(tmp_path, signing_chain()))
    signed, creds = sign(signer, "filter", png(), "image/png", params={"style": "noir"})
    assert creds.signed and creds.validation_state == "Trusted" and creds.signer == "test signer"
    # The development signer's own self-test names its folder instead of the settings.
    dev = make_dev_ca()
    folder, _ = ensure_dev_credentials(tmp_path / "dev")
    (folder / DEV_KEY).write_bytes(dev[2])  # a key from another run: not the certificate's
    with pytest.raises(ConfigError, match=f"the development signer in {folder} .*their public keys differ"):
        OutputSigner.from_settings(Settings(state_dir=tmp_path / "dev", _env_file=None))


def test_the_runner_command_refuses_to_start_with_an_expired_certificate(tmp_path: Path, monkeypatch, capsys) -> None:
    from bucketbrush.cli import main

    _, certs, key = signing_chain(expired=True)
    (tmp_path / "chain.pem").write_bytes(certs)
    (tmp_path / "key.pem").write_bytes(key)
    monkeypatch.setenv("BUCKETBRUSH_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("BUCKETBRUSH_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached
    monkeypatch.setenv("BUCKETBRUSH_C2PA_SIGNING_KEY", str(tmp_path / "key.pem"))
    monkeypatch.setenv("BUCKETBRUSH_C2PA_SIGNING_CERTS", str(tmp_path / "chain.pem"))
    monkeypatch.delenv("BUCKETBRUSH_CONTENT_CREDENTIALS", raising=False)
    assert main(["runner"]) == 2
    err = capsys.readouterr().err
    assert "error [config_error]: content credentials cannot be signed with BUCKETBRUSH_C2PA_SIGNING_KEY" in err
    assert "the certificate expired on" in err and str(tmp_path / "key.pem") not in err


def test_every_recipe_has_a_row_in_the_table() -> None:
    assert set(RECIPES) <= set(TABLE)
    doc = (Path(__file__).parent.parent / "docs" / "content-credentials.md").read_text()
    for name in RECIPES:
        assert f"| `{name}`" in doc, f"{name} missing from docs/content-credentials.md"
    empty = RecipeResult(artifacts=[])
    assert made_by("txt2img", None, empty).actions == ("c2pa.created",)
    assert made_by("inpaint", None, empty).source_type == COMPOSITE
    assert made_by("filter", None, empty).source_type is None


def test_an_input_the_library_cannot_read_is_a_described_parent(signer) -> None:
    buf = io.BytesIO()
    landscape(32, 32).save(buf, "BMP")
    parent = OutputSigner.parent(buf.getvalue(), None, "inbox/filter/scan.bmp")
    assert parent.mime == "image/bmp"
    signed, creds = sign(signer, "filter", png(), "image/png", parent, params={"style": "noir"})
    report = read_credentials(signed, "image/png", anchors=signer.signer.anchors)
    assert report.validation_state == "Trusted" and [a["action"] for a in report.actions][0] == "c2pa.opened"
    [ingredient] = report.ingredients
    assert ingredient["format"] == "image/bmp" and ingredient["sha256"] == parent.sha256


def test_the_runner_command_refuses_to_start_without_a_key(tmp_path: Path, monkeypatch, capsys) -> None:
    from bucketbrush.cli import main

    monkeypatch.setenv("BUCKETBRUSH_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("BUCKETBRUSH_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached
    for name in ("BUCKETBRUSH_CONTENT_CREDENTIALS", "BUCKETBRUSH_C2PA_SIGNING_KEY", "BUCKETBRUSH_C2PA_SIGNING_CERTS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["runner"]) == 2
    err = capsys.readouterr().err
    assert "error [config_error]: content credentials are on but no signing key" in err
    assert "BUCKETBRUSH_CONTENT_CREDENTIALS=off" in err


def test_verify_a_file_without_credentials_or_of_another_type(tmp_path: Path, capsys) -> None:
    from bucketbrush.cli import main

    (tmp_path / "plain.png").write_bytes(png())
    (tmp_path / "doc.json").write_text('{"a": 1}')
    for name in ("plain.png", "doc.json"):
        assert main(["verify", str(tmp_path / name)]) == 1
        assert "content credentials: none" in capsys.readouterr().out


def test_other_objects_the_recipe_read_are_input_to_ingredients(signer) -> None:
    source = OutputSigner.parent(png(), "image/png", "inbox/inpaint/in.png")
    mask = OutputSigner.parent(png(Image.new("L", (64, 48), 255)), None, "masks/m.png")
    keypoints = OutputSigner.parent(b'{"people": []}', None, "poses/p.json")
    r = get_recipe("inpaint")
    p = r.params.model_validate({"prompt": "x", "mask_key": "masks/m.png"})
    signed, creds = signer.sign(png(), "image/png", title="out.png", job_id="j", recipe="inpaint", params=p,
                                result=RecipeResult(artifacts=[]), made=made_by("inpaint", p, None), parent=source,
                                input_key=None, others=[mask, keypoints])
    assert creds.validation_state == "Trusted"
    report = read_credentials(signed, "image/png", anchors=signer.signer.anchors)
    assert sorted((i["relationship"], i["title"], i["sha256"]) for i in report.ingredients) == [
        ("inputTo", "m.png", mask.sha256), ("inputTo", "p.json", keypoints.sha256),
        ("parentOf", "in.png", source.sha256)]
