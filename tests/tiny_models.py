"""A tiny random SD1.5-style pipeline built from config, saved like a real model folder.

No hub access: every component is built from a config with random weights (seeded), the
tokenizer from a byte-level vocabulary with no merges. The folder has the layout
``from_pretrained`` expects (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/), so the code under test loads it exactly as it would load real weights.
"""

from __future__ import annotations

from pathlib import Path

TINY_SIZE = 64


def _byte_level_tokenizer():
    from transformers import CLIPTokenizer

    # Every byte as a token (in GPT-2/CLIP's printable byte mapping), with and without CLIP's
    # end-of-word marker, plus the specials. No merges: each character is one token, which
    # keeps the vocab tiny and fully offline.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + symbols + [s + "</w>" for s in symbols]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_tiny_sd15(folder: Path, *, seed: int = 0) -> Path:
    """Save a tiny random SD1.5-style pipeline into ``folder``; returns the folder."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=TINY_SIZE // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    # Four blocks keep vae_scale_factor at 8, as in real SD1.5.
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=TINY_SIZE,
    )
    text_encoder = clip_text_encoder(tokenizer, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                     num_hidden_layers=2)
    folder.mkdir(parents=True, exist_ok=True)
    sd15_pipeline(unet, vae, text_encoder, tokenizer).save_pretrained(folder)
    return folder


def clip_text_encoder(tokenizer, **sizes):
    """A random CLIP text encoder of the given sizes over ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sizes,
    ))


def sd15_pipeline(unet, vae, text_encoder, tokenizer):
    """The components as an SD1.5 pipeline: SD1.5's Euler-ancestral schedule, no safety checker."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_controlnet(base: Path, folder: Path, *, seed: int = 1) -> Path:
    """A random ControlNet shaped like ``base``'s UNet, saved into ``folder``."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    # from_unet copies the UNet's weights and zeroes the output convolutions, so the control
    # image would have no effect; random outputs make the guidance path observable.
    with torch.no_grad():
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            module.weight.normal_(0, 0.02)
    controlnet.save_pretrained(folder)
    return folder


def write_tiny_models(root: Path) -> Path:
    """Build the tiny pipeline and its ControlNets under ``root``; returns a models TOML."""
    base = build_tiny_sd15(root / "tiny-sd15")
    canny = build_tiny_controlnet(base, root / "tiny-cn-canny", seed=1)
    scribble = build_tiny_controlnet(base, root / "tiny-cn-scribble", seed=2)
    openpose = build_tiny_controlnet(base, root / "tiny-cn-openpose", seed=3)
    toml = root / "models.toml"
    toml.write_text(
        'default = "tiny"\n\n'
        "[models.tiny]\n"
        'family = "sd15"\n'
        f'path = "{base}"\n'
        'scheduler = "euler_a"\n'
        f"width = {TINY_SIZE}\nheight = {TINY_SIZE}\n\n"
        "[models.tiny.controlnets]\n"
        f'canny = "{canny}"\n'
        f'scribble = "{scribble}"\n'
        f'openpose = "{openpose}"\n\n'
        "[models.tiny-alias]\n"
        'family = "sd15"\n'
        f'path = "{base}"\n'
        f"width = {TINY_SIZE}\nheight = {TINY_SIZE}\n\n"
        "[models.gone]\n"
        'family = "sd15"\n'
        f'path = "{root / "not-downloaded"}"\n'
    )
    return toml
