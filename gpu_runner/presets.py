"""The 16 style presets of ``stylize``, and automatic strength from image complexity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from PIL import Image

PresetName = Literal[
    "auto", "realistic", "hdr", "noir", "sepia", "sketch", "cartoon", "anime", "ghibli",
    "oil_painting", "watercolor", "pop_art", "cyber", "fantasy", "steampunk", "minimalist",
]
Guidance = Literal["canny", "pose"]

AUTO_STRENGTH_MIN = 0.20
AUTO_STRENGTH_MAX = 0.70

_COMMON_NEGATIVE = "lowres, blurry, jpeg artifacts, watermark, signature, text, deformed, bad anatomy"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    prompt: str
    negative_prompt: str
    guidance: Guidance
    # Img2img strength; None means "computed from the image" (see auto_strength).
    strength: float | None


def _preset(name: str, description: str, prompt: str, negative: str, guidance: Guidance,
            strength: float | None) -> Preset:
    return Preset(name, description, prompt, f"{negative}, {_COMMON_NEGATIVE}", guidance, strength)


PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (
    _preset("auto", "Automatic enhancement with quality boost",
            "high quality, detailed, sharp focus, natural colors, professional photo",
            "oversaturated, overexposed", "canny", None),
    _preset("realistic", "Hyperrealistic photography",
            "hyperrealistic photograph, 8k, detailed skin texture, natural lighting, 85mm lens",
            "painting, illustration, cartoon, cgi", "canny", 0.35),
    _preset("hdr", "High dynamic range photography",
            "HDR photography, high dynamic range, vivid colors, dramatic lighting, detailed shadows",
            "flat lighting, dull colors", "canny", 0.40),
    _preset("noir", "Film noir black and white",
            "film noir, black and white photograph, high contrast, dramatic shadows, 1940s cinema",
            "color, colorful, saturated", "canny", 0.50),
    _preset("sepia", "Vintage sepia tone",
            "vintage sepia photograph, antique, aged paper, 19th century, warm brown tones",
            "modern, vivid colors, neon", "canny", 0.45),
    _preset("sketch", "Pencil sketch drawing",
            "detailed pencil sketch, graphite drawing, cross hatching, on white paper",
            "color, photograph, painting", "canny", 0.60),
    _preset("cartoon", "Pixar/Disney 3D render",
            "3d cartoon render, pixar style, disney style, cute, soft lighting, vibrant colors",
            "photograph, realistic, gritty", "pose", 0.60),
    _preset("anime", "High-quality anime style",
            "anime illustration, cel shading, clean lineart, vibrant colors, detailed eyes",
            "photograph, realistic, 3d render", "pose", 0.60),
    _preset("ghibli", "Studio Ghibli aesthetic",
            "studio ghibli style, hand painted anime background, soft pastel colors, whimsical",
            "photograph, realistic, dark, gritty", "pose", 0.60),
    _preset("oil_painting", "Classical oil painting",
            "classical oil painting, visible brush strokes, rich colors, canvas texture, old masters",
            "photograph, digital art, flat", "canny", 0.55),
    _preset("watercolor", "Watercolor painting",
            "watercolor painting, soft washes, paper texture, flowing pigments, delicate",
            "photograph, harsh lines, digital", "canny", 0.55),
    _preset("pop_art", "Andy Warhol pop art",
            "pop art, andy warhol style, bold flat colors, halftone dots, screen print",
            "photograph, realistic, muted colors", "canny", 0.65),
    _preset("cyber", "Cyberpunk neon aesthetic",
            "cyberpunk, neon lights, futuristic city glow, magenta and cyan, high tech",
            "daylight, rustic, natural", "canny", 0.55),
    _preset("fantasy", "Epic fantasy concept art",
            "epic fantasy concept art, magical atmosphere, dramatic lighting, highly detailed",
            "modern, mundane, photograph", "pose", 0.60),
    _preset("steampunk", "Victorian steampunk",
            "victorian steampunk, brass gears, copper pipes, steam, ornate machinery, sepia tones",
            "modern, minimalist, neon", "canny", 0.55),
    _preset("minimalist", "Minimalist fine art",
            "minimalist fine art, clean composition, negative space, simple shapes, muted palette",
            "cluttered, busy, detailed background", "canny", 0.50),
)})


def image_complexity(image: Image.Image) -> dict[str, float]:
    """Edge density (Canny) and grey-level entropy of ``image``, each scaled to 0..1, and
    their mean as ``complexity``. Measured at 512 px so the result does not depend on size."""
    import cv2

    gray = np.asarray(image.convert("L"))
    scale = 512 / max(gray.shape)
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    edges = cv2.Canny(gray, 100, 200)
    edge_density = float(np.count_nonzero(edges)) / edges.size
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum()) / 8.0
    # Busy photos have ~15-20% edge pixels; anything above counts as fully busy.
    edges_scaled = min(edge_density / 0.18, 1.0)
    return {"edge_density": round(edge_density, 4), "entropy": round(entropy, 4),
            "complexity": round((edges_scaled + entropy) / 2, 4)}


def auto_strength(complexity: float) -> float:
    """Img2img strength for an image of ``complexity`` (0..1): detailed images get less
    change so their structure survives, plain ones more. Clamped to 0.20..0.70."""
    strength = AUTO_STRENGTH_MAX - (AUTO_STRENGTH_MAX - AUTO_STRENGTH_MIN) * complexity
    return round(min(max(strength, AUTO_STRENGTH_MIN), AUTO_STRENGTH_MAX), 3)


def resolve_strength(preset: Preset, requested: float | str | None, image: Image.Image) -> tuple[float, dict[str, Any]]:
    """The strength to use and the facts behind it (for RecipeResult.details)."""
    if isinstance(requested, float | int):
        return float(requested), {"strength": float(requested), "strength_source": "params"}
    if requested is None and preset.strength is not None:
        return preset.strength, {"strength": preset.strength, "strength_source": "preset"}
    metrics = image_complexity(image)
    strength = auto_strength(metrics["complexity"])
    return strength, {"strength": strength, "strength_source": "auto", "image_complexity": metrics}
