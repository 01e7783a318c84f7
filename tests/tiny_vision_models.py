"""Tiny random transformers vision models, saved like real ones (no hub access).

A Depth Anything (DINOv2 backbone) depth estimator and a SegFormer semantic segmenter, each
with its image processor, in ``save_pretrained`` layout, so the code under test loads them
exactly as it would load ``depth-anything/Depth-Anything-V2-Small-hf`` or a SegFormer
checkpoint. Random weights: the outputs mean nothing, only the code path is real.
"""

from __future__ import annotations

from pathlib import Path

SEGMENTATION_LABELS = {0: "background", 1: "person", 2: "cat"}


def build_tiny_depth_anything(folder: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessorPil

    torch.manual_seed(seed)
    backbone = Dinov2Config(
        image_size=56, patch_size=14, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=32, out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False, apply_layernorm=True,
    )
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, patch_size=14,
                                 neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=8)
    model = DepthAnythingForDepthEstimation(config)
    # Random init leaves the head's output near zero, and its final ReLU clips most pixels to
    # exactly 0; larger weights and a positive last bias make the depth map vary across the
    # image, so the layer split has something to cut.
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0.0, 0.5)
        model.head.conv3.bias.fill_(5.0)
    processor = DPTImageProcessorPil(size={"height": 56, "width": 56}, keep_aspect_ratio=True,
                                     ensure_multiple_of=14, do_pad=False)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_segformer(folder: Path, *, seed: int = 0, labels: dict[int, str] | None = None) -> Path:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil

    torch.manual_seed(seed)
    id2label = labels or SEGMENTATION_LABELS
    config = SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=32, num_labels=len(id2label),
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )
    model = SegformerForSemanticSegmentation(config)
    processor = SegformerImageProcessorPil(size={"height": 64, "width": 64}, do_reduce_labels=False)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_tiny_vision_models(root: Path) -> dict[str, Path]:
    """Both tiny models under ``root``: {"depth": folder, "segmentation": folder}."""
    return {
        "depth": build_tiny_depth_anything(root / "tiny-depth-anything"),
        "segmentation": build_tiny_segformer(root / "tiny-segformer"),
    }
