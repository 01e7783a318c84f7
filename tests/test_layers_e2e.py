"""``layers`` and ``remove-bg`` end to end through the bucket.

The session stack's runner is configured with the tiny random depth and segmentation
models (``depth_model`` / ``segmentation_model`` in the ``stack`` fixture) and the tiny
diffusion models (painterly mode).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bucketbrush.samples import landscape, portrait
from tests.helpers import check_outputs, drop, png_bytes, wait_final
from tests.test_layers import GRABCUT_MIN_IOU, centred_subject, iou

pytestmark = pytest.mark.e2e


def meta(params: dict) -> dict:
    return {"Metadata": {"params": json.dumps(params)}}


def opaque(image) -> np.ndarray:
    return np.asarray(image.getchannel("A")) == 255


def test_photo_layers_through_the_bucket(bucket):
    src = landscape(128, 96)
    job_id = drop(bucket, "inbox/layers/scene.png", png_bytes(src), **meta({"count": 3, "output_depth": True}))
    manifest = wait_final(bucket, job_id, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    *layers, depth = check_outputs(bucket, manifest)
    assert len(layers) == 3 and all(im.mode == "RGBA" and im.size == (128, 96) for im in layers)
    assert (np.stack([opaque(im) for im in layers]).sum(axis=0) == 1).all()  # disjoint, cover all
    assert depth.mode == "L" and depth.size == (128, 96)
    records = manifest.details["layers"]
    keys = [out.key.rsplit("/", 1)[1] for out in manifest.outputs]
    assert [r["output"] for r in records] == keys[:3] and keys[3] == "depth.png"
    assert sum(r["coverage"] for r in records) == pytest.approx(1.0, abs=1e-5)
    assert all(a["depth_range"][1] <= b["depth_range"][0] for a, b in zip(records, records[1:], strict=False))
    assert manifest.model["type"] == "depth_anything" and manifest.params["mode"] == "photo"


def test_painterly_layers_through_the_bucket(bucket):
    params = {"mode": "painterly", "style": "watercolor", "count": 2, "steps": 2, "seed": 7}
    job_id = drop(bucket, "inbox/layers/portrait.png", png_bytes(portrait(96, 128)), **meta(params))
    manifest = wait_final(bucket, job_id, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    layers = check_outputs(bucket, manifest)
    painted = manifest.details["painterly"]
    # Painterly layers come at the painting's size (the tiny model's 64 px minimum here).
    assert len(layers) == 2 and layers[0].size == layers[1].size == (painted["width"], painted["height"])
    assert (np.stack([opaque(im) for im in layers]).sum(axis=0) == 1).all()
    assert manifest.seeds == [7] and manifest.model["diffusion"]["id"] == "tiny"
    assert painted["style"] == "watercolor" and painted["control"] == "canny"


@pytest.mark.parametrize("name,params", [
    ("count6", {"count": 6}),
    ("count1", {"count": 1}),
    ("jpeg", {"format": "jpeg"}),
    ("style-in-photo-mode", {"style": "watercolor"}),  # a painterly-only param
])
def test_layers_bad_params_are_invalid_params(bucket, name, params):
    job_id = drop(bucket, f"inbox/layers/bad-{name}.png", png_bytes(landscape(64, 48)), **meta(params))
    manifest = wait_final(bucket, job_id, timeout=60)
    assert manifest.status == "failed" and manifest.error.code == "invalid_params", manifest.error
    assert manifest.outputs == []


def test_remove_bg_with_the_segmentation_model(bucket):
    image, _ = centred_subject(96, 64)
    job_id = drop(bucket, "inbox/remove-bg/subject.png", png_bytes(image), **meta({"output_mask": True}))
    manifest = wait_final(bucket, job_id, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    cut, mask = check_outputs(bucket, manifest)
    assert cut.mode == "RGBA" and mask.mode == "L" and cut.size == mask.size == (96, 64)
    assert [o.key.rsplit("/", 1)[1] for o in manifest.outputs] == ["cutout.png", "mask.png"]
    assert manifest.details["method"] == "model" and manifest.model["type"] == "segformer"
    assert manifest.warnings == []


def test_remove_bg_grabcut_is_labelled(bucket):
    image, truth = centred_subject()
    job_id = drop(bucket, "inbox/remove-bg/grabcut.png", png_bytes(image),
                  **meta({"method": "grabcut", "output_mask": True}))
    manifest = wait_final(bucket, job_id, timeout=60)
    assert manifest.status == "succeeded", manifest.error
    cut, mask = check_outputs(bucket, manifest)
    assert manifest.details["method"] == "grabcut" and any("GrabCut" in w for w in manifest.warnings)
    assert iou(np.asarray(mask) >= 128, truth) >= GRABCUT_MIN_IOU
    assert np.array_equal(np.asarray(cut.getchannel("A")), np.asarray(mask))


def test_remove_bg_refuses_jpeg(bucket):
    job_id = drop(bucket, "inbox/remove-bg/photo.jpg", png_bytes(landscape(64, 48)), **meta({"format": "jpeg"}))
    manifest = wait_final(bucket, job_id, timeout=60)
    assert manifest.status == "failed" and manifest.error.code == "invalid_params"
