"""A full-size SD1.5 pipeline with random weights, built offline from configs.

The real model's architecture (UNet2DConditionModel, ~860M parameters, cross-attention 768;
the CLIP ViT-L/14 text encoder, 12 layers of width 768; the SD VAE with channels
128/256/512/512), so it does the real model's FLOPs and uses its memory: the honest stand-in
for timing where no weights can be downloaded. Its pictures are noise. The tokenizer is the
tiny models' byte-level one (no merges): a prompt costs a token per character, which only
changes how many of the 77 positions are padding, not the text encoder's work. Its text
encoder has 86M parameters against the real one's 123M: the difference is the 49,408-token
embedding table, a lookup that costs memory, not FLOPs.

Built once into a cache folder (about 4.3 GB in float32) and reused:

    python -m bench.full_size            # build (or reuse) and print the models TOML path
"""

from __future__ import annotations

import os
from pathlib import Path

FULL_SIZE = 512


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bucketbrush" / "sd15-random"


def build_full_size_sd15(folder: Path, *, seed: int = 0) -> Path:
    """Save a random-weight pipeline with the SD1.5 architecture into ``folder``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from tests.tiny_models import _byte_level_tokenizer, clip_text_encoder, sd15_pipeline

    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer()
    # UNet2DConditionModel's defaults are SD1.5's blocks (320/640/1280/1280, 2 layers per
    # block, 8 heads); only the text width differs.
    unet = UNet2DConditionModel(sample_size=FULL_SIZE // 8, cross_attention_dim=768)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, sample_size=FULL_SIZE,
    )
    text_encoder = clip_text_encoder(tokenizer, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                     num_hidden_layers=12, hidden_act="quick_gelu")
    pipe = sd15_pipeline(unet, vae, text_encoder, tokenizer)
    tmp = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(tmp)
    tmp.rename(folder)  # a build cut short never looks complete
    return folder


def write_full_size_models(root: Path | None = None) -> Path:
    """Build (or reuse) the pipeline under ``root`` and return a models TOML naming it ``sd15``."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    base = root / "sd15-random"
    if not (base / "model_index.json").exists():
        build_full_size_sd15(base)
    toml = root / "models.toml"
    toml.write_text(
        'default = "sd15"\n\n'
        "[models.sd15]\n"
        'family = "sd15"\n'
        f'path = "{base}"\n'
        'scheduler = "euler_a"\n'
        f"width = {FULL_SIZE}\nheight = {FULL_SIZE}\n"
    )
    return toml


def parameter_counts(folder: Path) -> dict[str, int]:
    """Parameters per component, read from the saved weights (to check the architecture)."""
    from safetensors import safe_open

    counts = {}
    for part in ("unet", "text_encoder", "vae"):
        total = 0
        for file in (folder / part).glob("*.safetensors"):
            with safe_open(file, "pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    total += _numel(f.get_slice(name).get_shape())
        counts[part] = total
    return counts


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    toml = write_full_size_models()
    print(toml)
    print({k: f"{v / 1e6:.0f}M" for k, v in parameter_counts(toml.parent / "sd15-random").items()})
