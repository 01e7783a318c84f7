"""Sample images, generated on the spot or shipped in the package, so the demo and tests need
no downloads."""

from __future__ import annotations

from importlib import resources

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def astronaut() -> Image.Image:
    """A real photo of a person (384 px): NASA's portrait of astronaut Eileen Collins, public
    domain, the same picture scikit-image ships as ``skimage.data.astronaut``."""
    with resources.files("bucketbrush").joinpath("data/astronaut.jpg").open("rb") as fh:
        image = Image.open(fh)
        image.load()
    return image.convert("RGB")


def landscape(width: int = 512, height: int = 384, seed: int = 7) -> Image.Image:
    """A small photo-like scene: sky gradient, sun, hills, a house, textured grass."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (1 - y) * np.array([90, 150, 230]) + y * np.array([235, 220, 200])
    arr = np.broadcast_to(sky, (height, width, 3)).astype(np.float32).copy()
    image = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    w, h = width, height
    draw.ellipse((w * 0.68, h * 0.10, w * 0.82, h * 0.29), fill=(255, 214, 90))
    for i, (color, base) in enumerate([((80, 120, 150), 0.55), ((60, 130, 80), 0.68)]):
        xs = np.linspace(0, w, 9)
        ys = h * base + rng.normal(0, h * 0.05, xs.size) - i * 5
        draw.polygon([(0, h), *zip(xs.tolist(), ys.tolist(), strict=True), (w, h)], fill=color)
    # A house: walls, roof, door, window.
    hx, hy, hw = w * 0.2, h * 0.62, w * 0.18
    draw.rectangle((hx, hy, hx + hw, hy + hw * 0.7), fill=(200, 90, 70), outline=(60, 30, 20), width=2)
    draw.polygon([(hx - 8, hy), (hx + hw / 2, hy - hw * 0.5), (hx + hw + 8, hy)], fill=(110, 50, 40))
    draw.rectangle((hx + hw * 0.4, hy + hw * 0.35, hx + hw * 0.6, hy + hw * 0.7), fill=(70, 40, 30))
    draw.rectangle((hx + hw * 0.1, hy + hw * 0.15, hx + hw * 0.3, hy + hw * 0.35), fill=(170, 210, 240))
    noise = rng.normal(0, 5, (h, w, 3))
    out = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(out).filter(ImageFilter.SMOOTH)


def portrait(width: int = 384, height: int = 512, seed: int = 3) -> Image.Image:
    """A simple figure on a textured background (faces, edges and flat areas for filters)."""
    rng = np.random.default_rng(seed)
    width, height, size = 384, 512, (width, height)  # drawn at a fixed size, then resized
    base = rng.normal(128, 25, (height, width, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(base).filter(ImageFilter.GaussianBlur(6))
    draw = ImageDraw.Draw(image)
    cx = width / 2
    draw.ellipse((cx - 70, 80, cx + 70, 250), fill=(235, 190, 160), outline=(90, 60, 40), width=3)
    draw.ellipse((cx - 40, 140, cx - 15, 160), fill=(40, 60, 90))
    draw.ellipse((cx + 15, 140, cx + 40, 160), fill=(40, 60, 90))
    draw.arc((cx - 35, 180, cx + 35, 225), 20, 160, fill=(150, 50, 50), width=4)
    draw.pieslice((cx - 80, 60, cx + 80, 170), 180, 360, fill=(70, 45, 30))
    draw.rectangle((cx - 110, 260, cx + 110, height), fill=(40, 90, 160), outline=(20, 40, 80), width=3)
    return image if image.size == size else image.resize(size, Image.LANCZOS)
