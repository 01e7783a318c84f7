"""Decode untrusted uploads safely and encode outputs."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from bucketbrush.errors import EmptyInput, ImageTooLarge, InvalidImage, UnsupportedFormat

FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """An RGB or RGBA image, upright per EXIF. Raises a JobError for anything else.

    Pillow's own decompression-bomb guard does the pixel check from the header, before any
    pixel data is decoded.
    """
    if not data:
        raise EmptyInput("the upload is empty (0 bytes)")
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x the limit and raises above 2x; refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"the image has more than {max_pixels:,} pixels (the configured limit)"
        ) from exc
    except UnidentifiedImageError as exc:
        if brand := _iso_brand(data):
            raise UnsupportedFormat(f"{brand} images are not supported: upload PNG, JPEG, WebP, AVIF, GIF or TIFF "
                                    "(e.g. set the camera to 'Most Compatible', or convert it first)") from exc
        raise InvalidImage("the upload is not an image in a format Pillow can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data surfaces as OSError ("image file is truncated") et al.
        raise InvalidImage(f"the image could not be decoded: {exc}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    image = ImageOps.exif_transpose(image)
    if image.mode not in ("RGB", "RGBA"):
        has_alpha = image.mode in ("LA", "PA") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    return image


# ISO-BMFF brands of still-image formats with no decoder here (Pillow reads AVIF itself).
_UNSUPPORTED_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
                       b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


def _iso_brand(data: bytes) -> str | None:
    """The format an ISO-BMFF ``ftyp`` box names (HEIC from a phone), if it is a still image's."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return _UNSUPPORTED_BRANDS.get(data[8:12])
    return None


def encode_image(image: Image.Image, fmt: str = "png", quality: int = 90, *,
                 xmp: str | None = None, png_level: int = 6) -> tuple[bytes, str]:
    """Bytes and content type of ``image`` in ``fmt`` (png, jpeg or webp), with the XMP packet
    ``xmp`` embedded when given (PNG: an ``XML:com.adobe.xmp`` iTXt chunk). ``png_level``: the
    PNG's zlib level (6: Pillow's default)."""
    pil_format, content_type = FORMATS[fmt]
    if pil_format == "JPEG" and image.mode != "RGB":
        image = image.convert("RGB")
    buf = io.BytesIO()
    options: dict[str, object] = {"compress_level": png_level} if pil_format == "PNG" else {"quality": quality}
    if xmp and pil_format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
        options["pnginfo"] = info
    elif xmp:
        options["xmp"] = xmp.encode()
    image.save(buf, pil_format, **options)
    return buf.getvalue(), content_type
