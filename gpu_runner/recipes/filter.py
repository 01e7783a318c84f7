"""``filter``: classic photo filters in OpenCV. Useful on any CPU, no model needed."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import Field

from gpu_runner.recipes.base import Artifact, JobContext, Recipe, RecipeParams, RecipeResult

Style = Literal["sketch", "sepia", "noir", "cartoon", "watercolor", "hdr"]
STYLES: tuple[str, ...] = Style.__args__  # type: ignore[attr-defined]


class FilterParams(RecipeParams):
    style: Style = "sketch"
    intensity: float = Field(default=1.0, ge=0.0, le=1.0, description="blend with the original")


def _sketch(bgr: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    blur = cv2.GaussianBlur(255 - gray, (21, 21), 0)
    # Colour dodge of the gray image with its blurred negative: pencil lines on paper.
    sketch = cv2.divide(gray, 255 - blur, scale=256)
    return cv2.cvtColor(sketch, cv2.COLOR_GRAY2BGR)


_SEPIA = np.array([[0.131, 0.534, 0.272], [0.168, 0.686, 0.349], [0.189, 0.769, 0.393]])  # BGR


def _sepia(bgr: np.ndarray) -> np.ndarray:
    return np.clip(cv2.transform(bgr.astype(np.float32), _SEPIA), 0, 255).astype(np.uint8)


def _noir(bgr: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    gray = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(gray)
    h, w = gray.shape
    # Vignette: darken towards the corners.
    kx = cv2.getGaussianKernel(w, w / 1.6)
    ky = cv2.getGaussianKernel(h, h / 1.6)
    mask = ky @ kx.T
    mask = 0.35 + 0.65 * mask / mask.max()
    out = np.clip(gray.astype(np.float32) * mask, 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)


def _cartoon(bgr: np.ndarray) -> np.ndarray:
    color = bgr
    for _ in range(2):
        color = cv2.bilateralFilter(color, 9, 75, 75)
    # Posterize: fewer colour levels.
    color = (color // 32) * 32 + 16
    gray = cv2.medianBlur(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 7)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 2)
    return cv2.bitwise_and(color, color, mask=edges)


def _watercolor(bgr: np.ndarray) -> np.ndarray:
    return cv2.stylization(bgr, sigma_s=60, sigma_r=0.45)


def _hdr(bgr: np.ndarray) -> np.ndarray:
    return cv2.detailEnhance(bgr, sigma_s=12, sigma_r=0.15)


_STYLE_FUNCS = {
    "sketch": _sketch, "sepia": _sepia, "noir": _noir,
    "cartoon": _cartoon, "watercolor": _watercolor, "hdr": _hdr,
}


def apply_filter(image: Image.Image, style: str, intensity: float = 1.0) -> Image.Image:
    """``image`` with the named style applied (alpha is kept as it was)."""
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
    out = _STYLE_FUNCS[style](bgr)
    if intensity < 1.0:
        out = cv2.addWeighted(out, intensity, bgr, 1.0 - intensity, 0)
    result = Image.fromarray(cv2.cvtColor(out, cv2.COLOR_BGR2RGB))
    if alpha is not None:
        result.putalpha(alpha)
    return result


def run(ctx: JobContext, image: Image.Image | None, params: FilterParams) -> RecipeResult:
    assert image is not None
    ctx.progress(0, 1)
    out = apply_filter(image, params.style, params.intensity)
    ctx.progress(1, 1)
    return RecipeResult(artifacts=[Artifact(name=params.style, image=out)])


RECIPE = Recipe(
    name="filter",
    description="OpenCV photo filters: " + ", ".join(STYLES),
    params=FilterParams,
    run=run,
)
