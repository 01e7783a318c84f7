"""The bad-input corpus: every case generated here (no binaries in the repository), each one
an object put into the bucket and the manifest it must end with (tests/test_corpus.py).

    .venv/bin/python -m tests.corpus DIR   # writes the cases' bodies to DIR, to look at them

Images go to the ``filter`` drop folder (sepia), keys too; params go in upload metadata or job
specs; job specs to ``jobs/``. A case expects ``succeeded`` (with an optional check of the
manifest) or ``failed`` with a stable error code.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageCms

from bucketbrush.manifest import Manifest
from bucketbrush.samples import landscape

SEPIA = {"style": "sepia"}
# An ordinary upload that job-spec cases name as their input (the test puts it first).
GOOD_INPUT = "inbox/filter/corpus/good/input.png"


@dataclass(frozen=True)
class Case:
    name: str
    key: str
    body: bytes
    expect: str  # succeeded | <error code>
    metadata: dict[str, str] = field(default_factory=dict)
    check: Callable[[Manifest], bool] | None = None  # for succeeded cases

    @property
    def is_spec(self) -> bool:
        return self.key.startswith("jobs/")


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _photo(w: int = 40, h: int = 20) -> Image.Image:
    return landscape(w, h)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims width x height; its few compressed bytes would inflate to all of it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\0" * (width + 1) * 4, 9)  # 4 rows: the decoder never gets this far
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def gif_bomb() -> bytes:
    """A tiny GIF whose logical screen and frame claim 65535 x 65535 pixels."""
    small = _save(Image.new("P", (2, 2)), "GIF")
    data = bytearray(small)
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    at = data.index(b",")  # image descriptor: left, top, width, height
    data[at + 5:at + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def webp_bomb() -> bytes:
    """An animated (VP8X) WebP whose canvas claims 16384 x 16384 pixels."""
    frames = [_photo(16, 16), _photo(16, 16).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    data = bytearray(_save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100))
    at = data.index(b"VP8X") + 8 + 4  # chunk header, then 4 bytes of flags
    data[at:at + 6] = (16383).to_bytes(3, "little") * 2  # canvas width-1, height-1
    return bytes(data)


def exif_oriented(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(_photo(40, 20), "JPEG", exif=exif.tobytes())


def heic_like() -> bytes:
    """An ISO-BMFF file with a HEIC brand (what an iPhone uploads); Pillow has no HEIC decoder."""
    ftyp = b"ftypheic" + b"\0\0\0\0" + b"mif1heic"
    return struct.pack(">I", len(ftyp) + 4) + ftyp + struct.pack(">I", 16) + b"meta" + b"\0" * 8


def _upright(manifest: Manifest) -> bool:
    """Orientations 5-8 swap the sides: the 40x20 source comes out 20x40."""
    return bool(manifest.outputs) and (manifest.outputs[0].width, manifest.outputs[0].height) == (20, 40)


def _as_is(manifest: Manifest) -> bool:
    return bool(manifest.outputs) and (manifest.outputs[0].width, manifest.outputs[0].height) == (40, 20)


def _size(w: int, h: int) -> Callable[[Manifest], bool]:
    return lambda m: bool(m.outputs) and (m.outputs[0].width, m.outputs[0].height) == (w, h)


def _spec(doc: object) -> bytes:
    return json.dumps(doc).encode()


def image_cases() -> list[Case]:
    photo = _photo()
    base = "inbox/filter/corpus/img"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    animated = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    png = _save(photo, "PNG")
    cases = [
        Case("cmyk-jpeg", f"{base}/cmyk.jpg", _save(photo.convert("CMYK"), "JPEG"), "succeeded", SEPIA, _as_is),
        Case("png-16-bit", f"{base}/gray16.png", _save(photo.convert("L").convert("I;16"), "PNG"), "succeeded",
             SEPIA, _as_is),
        Case("palette-transparency", f"{base}/palette.png",
             _save(photo.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0), "succeeded", SEPIA,
             _as_is),
        Case("gray-alpha", f"{base}/la.png", _save(photo.convert("LA"), "PNG"), "succeeded", SEPIA, _as_is),
        Case("animated-gif", f"{base}/anim.gif", _save(animated[0], "GIF", save_all=True,
                                                         append_images=animated[1:], duration=100, loop=0),
             "succeeded", SEPIA, _as_is),
        Case("animated-webp", f"{base}/anim.webp", _save(animated[0], "WEBP", save_all=True,
                                                           append_images=animated[1:], duration=100),
             "succeeded", SEPIA, _as_is),
        *(Case(f"exif-orientation-{o}", f"{base}/exif-{o}.jpg", exif_oriented(o), "succeeded", SEPIA,
               _upright if o >= 5 else _as_is) for o in range(2, 9)),
        Case("icc-profile", f"{base}/icc.jpg", _save(photo, "JPEG", icc_profile=icc), "succeeded", SEPIA, _as_is),
        Case("tiff", f"{base}/photo.tiff", _save(photo, "TIFF"), "succeeded", SEPIA, _as_is),
        Case("avif", f"{base}/photo.avif", _save(photo, "AVIF"), "succeeded", SEPIA, _as_is),
        Case("heic", f"{base}/photo.heic", heic_like(), "unsupported_format", SEPIA),
        Case("one-pixel", f"{base}/1x1.png", _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "succeeded",
             SEPIA, _size(1, 1)),
        Case("one-by-100000", f"{base}/1x100000.png", _save(Image.new("RGB", (1, 100_000), (9, 90, 200)), "PNG"),
             "succeeded", SEPIA, _size(1, 100_000)),
        Case("jpeg-named-png", f"{base}/really-a-jpeg.png", _save(photo, "JPEG"), "succeeded", SEPIA, _as_is),
        Case("png-trailing-garbage", f"{base}/trailing.png", png + b"\0garbage" * 64, "succeeded", SEPIA, _as_is),
        Case("polyglot-png-zip", f"{base}/polyglot.png", png + _zip_bytes(), "succeeded", SEPIA, _as_is),
        Case("png-bomb", f"{base}/bomb.png", png_bomb(), "image_too_large", SEPIA),
        Case("gif-bomb", f"{base}/bomb.gif", gif_bomb(), "image_too_large", SEPIA),
        Case("webp-bomb", f"{base}/bomb.webp", webp_bomb(), "image_too_large", SEPIA),
        Case("truncated-png", f"{base}/truncated.png", png[: len(png) // 2], "invalid_image", SEPIA),
        Case("not-an-image", f"{base}/text.png", b"hello, this is not an image\n" * 8, "invalid_image", SEPIA),
        Case("empty", f"{base}/empty.png", b"", "empty_input", SEPIA),
    ]
    return cases


def _zip_bytes() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.txt", "a zip appended to a PNG")
    return buf.getvalue()


def key_cases() -> list[Case]:
    png = _save(_photo(), "PNG")
    base = "inbox/filter/corpus/keys"
    name = "caf\u00e9.png"
    return [
        Case("key-nfc", f"{base}/{unicodedata.normalize('NFC', name)}", png, "succeeded", SEPIA),
        Case("key-nfd", f"{base}/{unicodedata.normalize('NFD', name)}", png, "succeeded", SEPIA),
        Case("key-spaces", f"{base}/a photo of me.png", png, "succeeded", SEPIA),
        Case("key-plus", f"{base}/a+b.png", png, "succeeded", SEPIA),
        Case("key-percent", f"{base}/100%25 a%20b.png", png, "succeeded", SEPIA),
        Case("key-dot-dot", f"{base}/../../etc.png", png, "invalid_key", SEPIA),
        Case("key-long-name", f"{base}/" + "k" * 240 + ".png", png, "succeeded", SEPIA),
        # Over S3's 1024-byte limit (SeaweedFS refuses even shorter keys): delivered as an event.
        Case("key-1025-bytes", f"{base}/" + "k" * (1025 - len(base) - 1 - 4) + ".png", png, "invalid_key", SEPIA),
        Case("key-control-chars", f"{base}/bell\x07tab\t.png", png, "invalid_key", SEPIA),
    ]


def param_cases() -> list[Case]:
    png = _save(_photo(), "PNG")
    base = "inbox/filter/corpus/params"
    jobs = "jobs/corpus-params"
    return [
        Case("param-nan-metadata", f"{base}/nan.png", png, "invalid_params", {"style": "sepia", "intensity": "nan"}),
        Case("param-nan-spec", f"{jobs}-nan.json", b'{"recipe": "filter", "input": "' + GOOD_INPUT.encode()
             + b'", "params": {"intensity": NaN}}', "invalid_params"),
        Case("param-huge-int", f"{jobs}-huge.json", _spec({"recipe": "filter", "input": GOOD_INPUT,
                                                          "params": {"quality": 10**40}}), "invalid_params"),
        Case("param-wrong-type", f"{jobs}-type.json", _spec({"recipe": "filter", "input": GOOD_INPUT,
                                                            "params": {"style": 5}}), "invalid_params"),
        Case("param-prompt-100kb", f"{jobs}-prompt.json", _spec({"recipe": "txt2img", "params": {
            "prompt": "a cat " * 17_000}}), "invalid_spec"),
        Case("param-prompt-60kb", f"{jobs}-prompt60.json", _spec({"recipe": "txt2img", "params": {
            "prompt": "a cat " * 10_000}}), "invalid_params"),
        Case("param-unknown-name", f"{base}/unknown.png", png, "invalid_params",
             {"params": json.dumps({"style": "sepia", "bogus": 1})}),
        Case("param-negative-size", f"{jobs}-negative.json", _spec({"recipe": "txt2img", "params": {
            "prompt": "a cat", "width": -512}}), "invalid_params"),
        Case("metadata-params-invalid-json", f"{base}/badjson.png", png, "invalid_params", {"params": "{not json"}),
        Case("metadata-params-not-object", f"{base}/list.png", png, "invalid_params", {"params": "[1, 2]"}),
    ]


def spec_cases() -> list[Case]:
    jobs = "jobs/corpus-spec"
    deep = "[" * 100_000 + "]" * 100_000
    return [
        Case("spec-deep-nesting", f"{jobs}-deep.json",
             b'{"recipe": "filter", "params": {"a": ' + deep.encode()[:60_000] + b"}}", "invalid_spec"),
        Case("spec-deep-nesting-valid", f"{jobs}-deep2.json",
             b'{"recipe": "filter", "params": {"a": ' + ("[" * 20_000 + "]" * 20_000).encode() + b"}}",
             "invalid_spec"),
        Case("spec-duplicate-keys", f"{jobs}-dup.json", b'{"recipe": "filter", "recipe": "txt2img"}',
             "invalid_spec"),
        Case("spec-not-utf8", f"{jobs}-latin1.json", '{"recipe": "filter", "note": "caf\u00e9"}'.encode("latin-1"),
             "invalid_spec"),
        Case("spec-over-64kb", f"{jobs}-big.json", _spec({"recipe": "filter", "pad": "x" * 70_000}), "invalid_spec"),
        Case("spec-input-manifests", f"{jobs}-other-prefix.json",
             _spec({"recipe": "filter", "input": "manifests/whatever.json"}), "invalid_spec"),
        Case("spec-input-status", f"{jobs}-status-prefix.json",
             _spec({"recipe": "filter", "input": "status/runners/x.json"}), "invalid_spec"),
        Case("spec-input-missing", f"{jobs}-missing.json",
             _spec({"recipe": "filter", "input": "inbox/filter/corpus/never-uploaded.png"}), "input_missing"),
        Case("spec-input-dot-dot", f"{jobs}-dotdot.json", _spec({"recipe": "filter", "input": "inbox/../x.png"}),
             "invalid_spec"),
        Case("spec-not-object", f"{jobs}-list.json", b"[1, 2, 3]", "invalid_spec"),
    ]


def cases() -> list[Case]:
    return [*image_cases(), *key_cases(), *param_cases(), *spec_cases()]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    out.mkdir(parents=True, exist_ok=True)
    for case in cases():
        (out / f"{case.name}.bin").write_bytes(case.body)
    print(f"{len(cases())} cases written to {out}")
