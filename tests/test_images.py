"""Decoding untrusted uploads, and the filter styles, without servers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bucketbrush.errors import EmptyInput, ImageTooLarge, InvalidImage
from bucketbrush.samples import landscape
from gpu_runner.images import decode_image, encode_image
from gpu_runner.recipes.filter import STYLES, apply_filter


def encoded(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_decode_modes_and_exif_orientation():
    assert decode_image(encoded(Image.new("L", (4, 3))), max_pixels=100).mode == "RGB"
    assert decode_image(encoded(Image.new("LA", (4, 3))), max_pixels=100).mode == "RGBA"
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    assert decode_image(encoded(image, "JPEG", exif=exif), max_pixels=10_000).size == (20, 40)


@pytest.mark.parametrize("data,error", [
    (b"", EmptyInput),
    (b"GIF89a" + b"\0" * 10, InvalidImage),
    (b"plain text", InvalidImage),
    (encoded(landscape(64, 48))[:300], InvalidImage),
])
def test_decode_rejects(data, error):
    with pytest.raises(error):
        decode_image(data, max_pixels=1_000_000)


def test_pixel_limit_uses_header_before_decoding():
    data = encoded(Image.new("1", (3000, 3000)))  # 9 MP in ~1 kB
    assert len(data) < 5000
    with pytest.raises(ImageTooLarge, match="1,000,000"):
        decode_image(data, max_pixels=1_000_000)
    assert decode_image(data, max_pixels=9_000_000).size == (3000, 3000)


def test_encode_formats():
    image = landscape(32, 24).convert("RGBA")
    for fmt, magic in (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")):
        data, content_type = encode_image(image, fmt)
        assert data.startswith(magic) and content_type == f"image/{fmt}"


def test_png_level_trades_bytes_for_time_never_pixels():
    image = landscape(160, 120)
    stored, fast, default = (encode_image(image, "png", png_level=level)[0] for level in (0, 1, 6))
    assert len(stored) > len(fast) > len(default)
    for data in (stored, fast, default):
        assert np.array_equal(np.asarray(decode_image(data, max_pixels=10**6)), np.asarray(image))


def test_filter_styles_have_their_character():
    image = landscape(160, 120)
    src = np.asarray(image, dtype=np.float32)
    out = {s: np.asarray(apply_filter(image, s), dtype=np.float32) for s in STYLES}
    for style, arr in out.items():
        assert arr.shape == src.shape, style
        assert np.abs(arr - src).mean() > 3, f"{style} barely changed the image"
    # sketch: mostly paper-white with dark lines; gray
    assert out["sketch"].mean() > 200 and np.ptp(out["sketch"], axis=2).max() == 0
    # noir: gray; sepia: warm (R > G > B on average)
    assert np.ptp(out["noir"], axis=2).max() == 0
    r, g, b = out["sepia"].reshape(-1, 3).mean(axis=0)
    assert r > g > b
    # cartoon: fewer distinct colours than the photo
    assert len(np.unique(out["cartoon"].reshape(-1, 3), axis=0)) < len(np.unique(src.reshape(-1, 3), axis=0)) / 2
    # hdr: more local contrast (Laplacian energy) than the source
    import cv2
    lap = lambda a: cv2.Laplacian(cv2.cvtColor(a.astype(np.uint8), cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()  # noqa: E731
    assert lap(out["hdr"]) > lap(src)
    # watercolor: flat washes (less grain in the flat sky) with stronger outlines
    grain = lambda a: np.abs(np.diff(a[5:30, 5:60], axis=1)).mean()  # noqa: E731
    assert grain(out["watercolor"]) < 0.75 * grain(src)  # measured 0.56


def test_intensity_blends_and_alpha_survives():
    image = landscape(64, 48).convert("RGBA")
    image.putalpha(128)
    half = apply_filter(image, "noir", 0.5)
    full = apply_filter(image, "noir", 1.0)
    assert half.mode == "RGBA" and half.getchannel("A").getextrema() == (128, 128)
    src = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert np.abs(np.asarray(half.convert("RGB"), dtype=np.float32) - src).mean() < \
        np.abs(np.asarray(full.convert("RGB"), dtype=np.float32) - src).mean()
