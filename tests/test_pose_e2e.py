"""Pose detection and person cut-outs end to end through the bucket, with the real models.

The session stack's runner has the tiny diffusion models (with an openpose ControlNet) and a
tiny random segmentation model, so ``remove-bg`` is asked for ``method=person`` explicitly
(``auto`` would take the configured model).
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import drop, png_bytes, wait_final
from tests.references import iou, photo, reference
from tests.test_pose import distance

pytestmark = pytest.mark.e2e


def meta(params: dict) -> dict:
    return {"Metadata": {"params": json.dumps(params)}}


def fetch(bucket, output) -> bytes:
    data = bucket.s3.get_object(Bucket=bucket.name, Key=output.key)["Body"].read()
    assert len(data) == output.bytes and hashlib.sha256(data).hexdigest() == output.sha256
    return data


def test_annotate_pose_from_a_photo_with_keypoints_json(bucket):
    job_id = drop(bucket, "inbox/annotate/astronaut.png", png_bytes(photo("astronaut")),
                  **meta({"kind": "pose", "output_keypoints": True}))
    manifest = wait_final(bucket, job_id, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    pose_out, json_out = manifest.outputs
    assert pose_out.key.endswith("/pose.png") and (pose_out.width, pose_out.height) == (512, 512)
    assert json_out.key.endswith("/keypoints.json") and json_out.content_type == "application/json"
    assert json_out.width is None and json_out.height is None
    doc = json.loads(fetch(bucket, json_out))
    nx, ny, tolerance = reference("astronaut").keypoints["nose"]
    assert distance(doc["people"][0]["pose_keypoints_2d"][:2], (nx, ny)) <= tolerance
    drawn = np.asarray(Image.open(io.BytesIO(fetch(bucket, pose_out))))
    assert drawn[:200].any() and not drawn[:, 400:].any()
    details = manifest.details["pose"]
    assert details["detector"] == "mediapipe-blazepose" and details["landmarks"] == 33
    assert details["people"] == 1 and details["confidence"][0] >= 0.5
    assert manifest.warnings == []

    job_id = drop(bucket, "inbox/annotate/coffee.png", png_bytes(photo("coffee")), **meta({"kind": "pose"}))
    nobody = wait_final(bucket, job_id, timeout=120)
    assert nobody.status == "succeeded", nobody.error
    assert [o.key.rsplit("/", 1)[1] for o in nobody.outputs] == ["canny.png"]
    assert nobody.warnings[0].startswith("no_pose_found") and nobody.details["pose"]["fallback"] == "canny"


def test_person_cutout_and_posed_stylize_through_the_bucket(bucket):
    job_id = drop(bucket, "inbox/remove-bg/camera.png", png_bytes(photo("camera")),
                  **meta({"method": "person", "output_mask": True}))
    manifest = wait_final(bucket, job_id, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    assert manifest.details["method"] == "person" and manifest.model["id"] == "selfie_segmentation"
    mask = np.asarray(Image.open(io.BytesIO(fetch(bucket, manifest.outputs[1])))) >= 128
    assert iou(mask, reference("camera").mask()) >= 0.88

    job_id = drop(bucket, "inbox/stylize/astronaut.png", png_bytes(photo("astronaut").resize((128, 128))),
                  **meta({"style": "cartoon", "steps": 2, "seed": 3}))
    styled = wait_final(bucket, job_id, timeout=180)
    assert styled.status == "succeeded", styled.error
    assert styled.details["control"] == "openpose" and styled.details["pose"]["people"] == 1
    assert styled.model["controlnet"]["kind"] == "openpose"
