"""Pose detection and person segmentation with the real MediaPipe models (LiteRT), on real photos.

The photos are scikit-image's shipped samples: ``astronaut`` (Eileen Collins, upper body,
facing the camera), ``camera`` (the cameraman, side view, bent over his camera) and photos
without people (``coffee``, ``chelsea`` the cat, ``rocket``). Reference keypoints (with their
tolerances, in pixels of the 512x512 photos) and person masks were labelled by hand:
tests/data/<photo>.json, made as tests/data/README.md says. Needs the ``pose`` extra
(ai-edge-litert) and the mediapipe wheel.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from bucketbrush.errors import InvalidParams, ModelUnavailable
from gpu_runner import annotators as A
from gpu_runner import pose, segmentation, tflite
from gpu_runner.recipes import annotate, remove_bg
from gpu_runner.recipes.base import JobContext
from gpu_runner.runner import resolve_params
from tests.references import iou, photo, reference

ASTRONAUT, CAMERA = reference("astronaut"), reference("camera")
FACE_AND_ARMS = ("nose", "right_eye", "left_eye", "right_shoulder", "left_shoulder", "right_elbow")
# BlazePose landmark indices.
LEFT_WRIST, RIGHT_WRIST = 15, 16


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return photo("astronaut")


@pytest.fixture(scope="module")
def astronaut_pose(astronaut) -> pose.PoseResult:
    return pose.detect_poses(astronaut)


@pytest.fixture(scope="module")
def camera_pose() -> pose.PoseResult:
    return pose.detect_poses(photo("camera"))


def keypoint(person: pose.DetectedPerson, name: str) -> tuple[float, float, float] | None:
    return person.keypoints[A.KEYPOINT_NAMES.index(name)]


def distance(point, target) -> float:
    return math.hypot(point[0] - target[0], point[1] - target[1])


# -- the pipeline's arithmetic ------------------------------------------------------------


def test_ssd_anchors_are_the_detectors_2254():
    anchors = pose.ANCHORS
    assert anchors.shape == (2254, 4)  # the model's output rows
    # Stride 8 (28x28 cells) and 16 (14x14): 2 anchors per cell; the three stride-32 layers
    # share one 7x7 grid with 2 anchors each: 1568 + 392 + 294.
    assert np.allclose(anchors[0], [0.5 / 28, 0.5 / 28, 1, 1]) and np.allclose(anchors[1], anchors[0])
    assert np.allclose(anchors[1568], [0.5 / 14, 0.5 / 14, 1, 1])
    assert np.allclose(anchors[1568 + 392], [0.5 / 7, 0.5 / 7, 1, 1])
    assert np.allclose(anchors[-1], [6.5 / 7, 6.5 / 7, 1, 1])
    assert np.allclose(anchors[:, 2:], 1.0)  # fixed_anchor_size
    # The same code gives BlazeFace short-range's published 896 anchors from its own options.
    face = pose.ssd_anchors(num_layers=4, min_scale=0.1484375, max_scale=0.75, input_size=128, anchor_offset=0.5,
                            strides=(8, 16, 16, 16), aspect_ratios=(1.0,), fixed_anchor_size=True)
    assert len(face) == 896
    sized = pose.ssd_anchors(num_layers=2, min_scale=0.2, max_scale=0.6, input_size=64, anchor_offset=0.5,
                             strides=(32, 64), aspect_ratios=(1.0, 4.0), fixed_anchor_size=False)
    assert len(sized) == 2 * 2 * 3 + 1 * 3
    assert np.allclose(sized[1, 2:], [0.2 * 2, 0.2 / 2])  # aspect 4: w = s * 2, h = s / 2
    assert np.allclose(sized[2, 2:], [math.sqrt(0.2 * 0.6)] * 2)  # interpolated scale


def test_decoding_uses_the_anchors_the_scale_and_the_score_threshold():
    anchors = np.array([[0.25, 0.5, 1, 1], [0.75, 0.5, 1, 1], [0.5, 0.5, 1, 1]], np.float32)
    raw = np.zeros((3, 12), np.float32)
    raw[0, :4] = [22.4, -11.2, 44.8, 89.6]  # centre +0.1, -0.05; 0.2 x 0.4 (of 224)
    raw[0, 4:] = np.arange(8) * 22.4  # keypoints: offsets 0, 0.1, ..., 0.7 (x, y pairs)
    raw[1, 2] = -10.0  # negative width: dropped
    scores = np.array([2.0, 5.0, -300.0], np.float32)  # sigmoid 0.88; 0.99; clipped to -100: 0
    (only,) = pose.decode_detections(raw, scores, anchors)
    assert only.score == pytest.approx(1 / (1 + math.exp(-2)))
    assert only.box == pytest.approx((0.25, 0.25, 0.45, 0.65), abs=1e-6)
    assert only.keypoints[1] == pytest.approx((0.25 + 0.2, 0.5 + 0.3))
    assert pose.decode_detections(raw, np.full(3, -1.0, np.float32), anchors) == []  # 0.27 < 0.5


def det(score: float, box: tuple[float, float, float, float], k: float = 0.0) -> pose.Detection:
    return pose.Detection(score, box, np.full((4, 2), k, np.float32))


def test_weighted_nms_merges_overlaps_into_score_weighted_means():
    a, b = det(0.9, (0.0, 0.0, 0.4, 0.4), 0.1), det(0.6, (0.1, 0.0, 0.5, 0.4), 0.4)  # IoU 0.6
    far = det(0.7, (0.6, 0.6, 0.9, 0.9), 0.8)
    out = pose.weighted_nms([b, far, a])
    assert [d.score for d in out] == [0.9, 0.7]  # by score; the merged one keeps the best score
    assert out[0].box == pytest.approx((0.04, 0.0, 0.44, 0.4))  # (0.9 * 0 + 0.6 * 0.1) / 1.5 ...
    assert np.allclose(out[0].keypoints, 0.22)
    assert out[1].box == far.box
    # Overlap at or under the threshold (0.3) is another person.
    touching = det(0.5, (0.3, 0.0, 0.7, 0.4))  # IoU with a: 0.1 * 0.4 / (0.16 + 0.16 - 0.04)
    assert len(pose.weighted_nms([a, touching])) == 2
    assert pose.iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert pose.weighted_nms([]) == []


@pytest.mark.parametrize(("scale_point", "rotation"), [
    ((100, 40), 0.0),  # straight above the hips: upright
    ((160, 100), math.pi / 2),  # to the right: the body lies along +x, the crop turns 90 degrees
    ((40, 100), -math.pi / 2),
    ((100 + 30, 100 - 30 * math.sqrt(3)), math.pi / 6),  # 30 degrees right of vertical
])
def test_alignment_roi_size_and_rotation(scale_point, rotation):
    roi = pose.alignment_roi((100, 100), scale_point)
    assert (roi.cx, roi.cy) == (100, 100)
    assert roi.width == roi.height == pytest.approx(2 * 60 * 1.25)
    assert roi.rotation == pytest.approx(rotation)
    # The scale point is straight above the centre in the crop's own frame.
    x, y = roi.to_image(np.array(0.5), np.array(0.5 - 60 / roi.height))
    assert (float(x), float(y)) == pytest.approx(scale_point, abs=1e-6)
    assert abs(pose.alignment_roi((0, 0), (0, 10)).rotation) == pytest.approx(math.pi)  # upside down


def test_rotated_crop_and_projection_agree():
    """A marker cropped through a rotated region lands where to_image says it came from."""
    image = np.zeros((300, 400, 3), np.uint8)
    roi = pose.RotatedRect(210, 140, 180, 180, math.radians(35))
    u, v = 0.3, 0.7
    x, y = roi.to_image(np.array(u), np.array(v))
    cv2.circle(image, (round(float(x)), round(float(y))), 3, (255, 255, 255), -1)
    tensor = pose.crop(image, roi, 128, cv2.BORDER_CONSTANT)
    ys, xs = np.nonzero(tensor[..., 0] > 128)
    assert (xs.mean() / 128, ys.mean() / 128) == pytest.approx((u, v), abs=1.5 / 128)
    # Letterboxing: a wide image is padded top and bottom, the centre stays the centre.
    box = pose.letterbox_roi(400, 300)
    assert (box.cx, box.cy, box.width, box.height) == (200, 150, 400, 400)


def test_heatmap_refinement_moves_points_to_confident_peaks_only():
    heatmap = np.full((64, 64, 3), -10.0, np.float32)
    heatmap[20, 33, 0] = 10.0  # a sharp peak one column right of point 0
    heatmap[40, 40, 1] = 0.0  # point 1: peak confidence 0.5, the threshold: refined
    heatmap[10, 10, 2] = -1.0  # point 2: 0.27, under it: left alone
    xy = np.array([[32.5 / 64, 20.5 / 64], [41.2 / 64, 40.9 / 64], [10.5 / 64, 10.5 / 64]], np.float32)
    out = pose.refine_from_heatmap(xy, heatmap)
    assert out[0] == pytest.approx((33 / 64, 20 / 64), abs=0.002)  # the peak's cell index / 64
    assert out[1] != pytest.approx(xy[1])
    assert out[2] == pytest.approx(xy[2])
    off_map = np.array([[1.5, 0.5]], np.float32)
    assert pose.refine_from_heatmap(off_map, heatmap[..., :1])[0] == pytest.approx((1.5, 0.5))


def test_blazepose_to_openpose_mapping():
    marks = np.zeros((33, 4), np.float32)
    marks[:, :2] = np.arange(33)[:, None] * 3 + 10  # point i at (10 + 3i, 10 + 3i)
    marks[:, 2:] = 0.9
    marks[pose.LEFT_SHOULDER, :2], marks[pose.RIGHT_SHOULDER, :2] = (60, 100), (20, 104)
    marks[27, 2] = 0.3  # left ankle: hidden
    marks[28, :2] = (500, 50)  # right ankle: off the 200x200 image
    points = pose.to_openpose(marks, 200, 200)
    names = dict(zip(A.KEYPOINT_NAMES, points, strict=True))
    assert names["neck"] == pytest.approx((40, 102, 0.9))
    assert names["left_shoulder"][:2] == (60, 100) and names["right_shoulder"][:2] == (20, 104)
    assert names["nose"][:2] == (10, 10) and names["right_wrist"][:2] == (58, 58)  # BlazePose 16
    assert names["left_eye"][:2] == (16, 16) and names["right_ear"][:2] == (34, 34)  # 2 and 8
    assert names["left_ankle"] is None and names["right_ankle"] is None
    marks[pose.LEFT_SHOULDER, 3] = 0.2  # presence counts too: the neck goes with a shoulder
    assert pose.to_openpose(marks, 200, 200)[1] is None


def test_guided_filter_snaps_a_blurry_mask_to_the_guides_edge():
    guide = np.zeros((64, 64), np.float32)
    guide[:, 30:] = 1.0  # a sharp step at x = 30
    blurry = np.clip((np.arange(64, dtype=np.float32) - 22) / 16, 0, 1)[None].repeat(64, 0)  # ramp 22..38
    out = segmentation.guided_filter(guide, blurry, radius=4, eps=1e-4)
    # The 16 px ramp gets a cliff where the guide has its edge: one step of 0.31 (was 0.06).
    assert out[32, 30] - out[32, 29] > 0.25 > 3 * (blurry[32, 30] - blurry[32, 29])
    assert out[32, 29] < 0.4 < blurry[32, 29] and out[32, 30] > 0.6  # each side moved away from 0.5
    flat = segmentation.guided_filter(np.full((64, 64), 0.5, np.float32), blurry, radius=4, eps=1e-4)
    twice = cv2.blur(cv2.blur(blurry, (9, 9)), (9, 9))
    assert np.allclose(flat[8:-8, 8:-8], twice[8:-8, 8:-8], atol=1e-5)  # no edge in the guide: mean of box means
    fast = segmentation.guided_filter(guide, blurry, radius=4, eps=1e-4, subsample=2)
    assert np.abs(fast - out).mean() < 0.05


# -- real models on real photos ---------------------------------------------------------


def test_models_load_from_the_wheel_and_describe_themselves():
    for name in tflite.MODELS:
        model = tflite.load(name)
        assert model.path.is_file() and len(model.sha256) == 64
        info = model.describe()
        assert info["license"] == "Apache-2.0" and info["runtime"].startswith("ai-edge-litert")
        assert info["source"].startswith("mediapipe 0.10.21")
    assert tflite.available() is None


def test_astronaut_keypoints_match_the_hand_labels(astronaut_pose):
    (person,) = astronaut_pose.people
    assert person.score >= 0.5 and person.presence >= 0.5
    for name in FACE_AND_ARMS:
        x, y, tolerance = ASTRONAUT.keypoints[name]
        point = keypoint(person, name)
        assert point is not None, f"{name} not visible"
        assert distance(point, (x, y)) <= tolerance, f"{name} at {point[:2]}, labelled ({x}, {y})"
    nose, neck = keypoint(person, "nose"), keypoint(person, "neck")
    right, left = keypoint(person, "right_shoulder"), keypoint(person, "left_shoulder")
    assert nose[1] < neck[1] and nose[1] < min(right[1], left[1]) - 80  # the head is above the shoulders
    assert right[0] < neck[0] < left[0]  # she faces the camera: her right is the image's left
    # Her right wrist is the glove's ring at the bottom (the raw landmark: it is half hidden).
    x, y, tolerance = ASTRONAUT.keypoints["right_wrist"]
    assert distance(person.landmarks[RIGHT_WRIST], (x, y)) <= tolerance
    # The hips and legs are out of the frame.
    assert all(keypoint(person, n) is None for n in ("right_hip", "left_hip", "right_knee", "left_ankle"))


def test_cameraman_keypoints_in_side_view(camera_pose):
    (person,) = camera_pose.people
    x, y, tolerance = CAMERA.keypoints["nose"]
    assert distance(keypoint(person, "nose"), (x, y)) <= tolerance
    x, y, tolerance = CAMERA.keypoints["eye"]  # his near eye (the model may call it either)
    assert min(distance(keypoint(person, n), (x, y)) for n in ("right_eye", "left_eye")) <= tolerance
    for index in (LEFT_WRIST, RIGHT_WRIST):  # each wrist at one of his gloved hands on the camera
        x, y = person.landmarks[index, :2]
        assert any(x0 - 20 <= x <= x1 + 20 and y0 - 20 <= y <= y1 + 20 for x0, y0, x1, y1 in CAMERA.hands), (x, y)


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_photos_without_people_give_no_pose(name):
    result = pose.detect_poses(photo(name))
    assert result.people == () and result.candidates == 0
    assert result.openpose_json()["people"] == []


def test_rotated_and_mirrored_photos_give_the_same_skeleton(astronaut, astronaut_pose):
    upright = astronaut_pose.people[0]
    turned = pose.detect_poses(astronaut.rotate(90, expand=True)).people[0]  # counter-clockwise
    assert abs(turned.roi.rotation + math.pi / 2) < 0.35  # the crop turned with her
    for name in ("nose", "right_eye", "left_eye", "right_shoulder", "left_shoulder"):
        x, y, _ = keypoint(upright, name)
        assert distance(keypoint(turned, name), (y, 511 - x)) <= 12, name
    mirrored = pose.detect_poses(ImageOps.mirror(astronaut)).people[0]
    for a, b in (("right_shoulder", "left_shoulder"), ("right_eye", "left_eye")):
        x, y, _ = keypoint(upright, a)  # sides swap in a mirror (within the labels' tolerance)
        assert distance(keypoint(mirrored, b), (511 - x, y)) <= ASTRONAUT.keypoints[a][2], (a, b)


def test_several_people_up_to_the_limit(astronaut):
    gap = 200
    both = Image.new("RGB", (2 * 512 + gap, 512), (128, 128, 128))
    both.paste(astronaut, (0, 0))
    both.paste(ImageOps.mirror(astronaut), (512 + gap, 0))
    result = pose.detect_poses(both)
    assert len(result.people) == 2
    noses = sorted(keypoint(p, "nose")[0] for p in result.people)
    assert noses == pytest.approx([224, 512 + gap + 511 - 224], abs=15)
    (best,) = pose.detect_poses(both, max_people=1).people
    assert best.score == max(p.score for p in result.people)


def test_openpose_json_round_trips_through_the_parser(astronaut_pose):
    doc = astronaut_pose.openpose_json()
    assert doc["canvas_width"] == doc["canvas_height"] == 512 and len(doc["people"][0]["pose_keypoints_2d"]) == 54
    parsed = A.parse_openpose_keypoints(json.dumps(doc))
    direct = A.render_openpose(astronaut_pose.skeletons(), 256, 256)
    assert np.array_equal(np.asarray(A.render_openpose(parsed, 256, 256)), np.asarray(direct))


# -- the recipes -------------------------------------------------------------------------


def test_annotate_pose_from_a_plain_photo(astronaut):
    params = resolve_params(annotate.RECIPE, {"kind": "pose", "output_keypoints": True}, {})
    result = annotate.RECIPE.run(JobContext("j"), astronaut, params)
    image, keypoints = result.artifacts
    assert image.name == "pose" and image.image.size == astronaut.size and result.warnings == []
    out = np.asarray(image.image)
    nx, ny, tolerance = ASTRONAUT.keypoints["nose"]
    assert any(tuple(out[y, x]) == A.COLORS[0] for y in range(ny - 12, ny + 12) for x in range(nx - 12, nx + 12))
    assert out[:150].any() and not out[:, 400:].any()  # drawn on her, nothing over the shuttle
    details = result.details["pose"]
    assert details["detector"] == "mediapipe-blazepose" and details["landmarks"] == 33
    assert details["people"] == 1 and details["confidence"][0] >= 0.5
    assert [m["id"] for m in details["models"]] == ["pose_detection", "pose_landmark_full"]
    assert keypoints.data is not None and keypoints.content_type == "application/json"
    doc = json.loads(keypoints.data)
    assert distance(doc["people"][0]["pose_keypoints_2d"][:2], (nx, ny)) <= tolerance


def test_annotate_pose_without_a_person_falls_back_to_canny():
    coffee = photo("coffee")
    result = annotate.RECIPE.run(JobContext("j"), coffee, annotate.AnnotateParams(kind="pose", output_keypoints=True))
    edges, keypoints = result.artifacts
    assert edges.name == "canny"
    assert np.array_equal(np.asarray(edges.image), np.asarray(A.canny(coffee)))
    assert result.warnings and result.warnings[0].startswith("no_pose_found")
    assert result.details["pose"]["people"] == 0 and result.details["pose"]["fallback"] == "canny"
    assert json.loads(keypoints.data)["people"] == []


def test_remove_bg_person_covers_the_person_better_than_grabcut(astronaut):
    for ref, image, held, least in ((ASTRONAUT, astronaut, True, 0.93), (CAMERA, photo("camera"), False, 0.88)):
        truth = ref.mask(held)
        result = remove_bg.run(JobContext("j"), image, remove_bg.RemoveBgParams(method="person", output_mask=True))
        assert result.details["method"] == "person" and result.model["id"] == "selfie_segmentation"
        mask = np.asarray(result.artifacts[1].image) >= 128
        person = iou(mask, truth)
        grabcut = iou(segmentation.grabcut_foreground(image)[0], truth)
        assert person >= least and person >= grabcut + 0.08, (ref.name, person, grabcut)
    # Against the astronaut alone, the helmet she holds counts against the model (measured 0.75).
    assert iou(segmentation.person_foreground(astronaut).alpha >= 0.5, ASTRONAUT.mask()) >= 0.70


def test_remove_bg_auto_takes_the_person_model_only_when_a_person_is_there(astronaut):
    found = remove_bg.run(JobContext("j"), astronaut, remove_bg.RemoveBgParams())
    assert found.details["method"] == "person" and found.warnings == []
    assert found.details["refine"] == "guided" and found.details["radius"] == 4
    empty = remove_bg.run(JobContext("j"), photo("coffee"), remove_bg.RemoveBgParams())
    assert empty.details["method"] == "grabcut"
    assert "no person was detected" in empty.warnings[0] and "GrabCut" in empty.warnings[0]


def test_person_mask_refinement_can_be_turned_off(astronaut):
    raw = segmentation.person_foreground(astronaut, refine=False)
    refined = segmentation.person_foreground(astronaut)
    assert raw.details["refine"] == "none" and refined.details["refine"] == "guided"
    assert 0 < np.abs(raw.alpha - refined.alpha).mean() < 0.05
    assert raw.alpha.shape == refined.alpha.shape == (512, 512)


def test_params_of_the_new_paths_fail_early():
    with pytest.raises(InvalidParams):
        resolve_params(remove_bg.RECIPE, {"method": "people"}, {})
    with pytest.raises(InvalidParams):
        resolve_params(annotate.RECIPE, {"kind": "pose", "max_people": 11}, {})


@pytest.fixture
def without_the_wheel(monkeypatch):
    """As on a runner without the mediapipe wheel: the install record lookup finds nothing."""
    tflite.clear()
    monkeypatch.setattr(tflite, "WHEEL", "bucketbrush-no-such-wheel")
    yield
    monkeypatch.undo()
    tflite.clear()


def test_missing_models_fail_or_fall_back_with_a_clear_message(without_the_wheel, astronaut):
    with pytest.raises(ModelUnavailable, match=r"pip install --no-deps mediapipe==0\.10\.21") as info:
        annotate.RECIPE.run(JobContext("j"), astronaut, annotate.AnnotateParams(kind="pose"))
    assert info.value.code == "model_unavailable"
    with pytest.raises(ModelUnavailable):
        remove_bg.run(JobContext("j"), astronaut, remove_bg.RemoveBgParams(method="person"))
    fallback = remove_bg.run(JobContext("j"), astronaut, remove_bg.RemoveBgParams())
    assert fallback.details["method"] == "grabcut" and "person model is unavailable" in fallback.warnings[0]
    assert "not installed" in tflite.available()


def test_missing_runtime_is_model_unavailable(tmp_path):
    """A fresh interpreter where ai_edge_litert cannot be imported."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['ai_edge_litert'] = None\n"
            "from gpu_runner import tflite\n"
            "from bucketbrush.errors import ModelUnavailable\n"
            "try:\n    tflite.load('pose_detection')\nexcept ModelUnavailable as e:\n    print(e.code, e.message)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.startswith("model_unavailable the TFLite runtime (ai-edge-litert) is not installed"), out


# -- stylize: pose presets on the detected pose (tiny random diffusion models) -----------------


SMALL_ASTRONAUT = photo("astronaut").resize((128, 128))


@pytest.fixture(scope="module")
def stylize_ctx(models_toml):
    """A context with the tiny models; its bucket holds the pose detected in SMALL_ASTRONAUT."""
    from gpu_runner.devices import RuntimeOptions
    from gpu_runner.models import ModelRegistry
    from gpu_runner.pipelines import ModelCache

    cache = ModelCache(ModelRegistry.from_toml(models_toml), RuntimeOptions(device="cpu", dtype="float32"))
    keypoints = json.dumps(pose.detect_poses(SMALL_ASTRONAUT).openpose_json()).encode()
    return JobContext("j", models=cache, load_bytes=lambda key: keypoints)


def stylize(ctx: JobContext, image: Image.Image, **params: object):
    from gpu_runner.recipes import stylize as recipe

    return recipe.RECIPE.run(ctx, image, resolve_params(recipe.RECIPE, {"steps": 2, "seed": 5, **params}, {}))


def test_stylize_pose_presets_use_the_detected_pose(stylize_ctx):
    small = SMALL_ASTRONAUT
    result = stylize(stylize_ctx, small, style="anime", output_keypoints=True)
    assert result.details["control"] == "openpose" and result.model["controlnet"]["kind"] == "openpose"
    assert result.details["pose"]["people"] == 1 and not any("pose" in w for w in result.warnings)
    image, keypoints = result.artifacts
    assert image.image.size == (64, 64) and keypoints.name == "keypoints"
    assert json.loads(keypoints.data)["canvas_width"] == 128
    # The same pose given as keypoints (pose_key) gives the same control image, so the same picture.
    given = stylize(stylize_ctx, small, style="anime", pose_key="poses/astronaut.json")
    assert given.details["pose"] == {"source": "keypoints"}
    assert np.array_equal(np.asarray(given.artifacts[0].image), np.asarray(image.image))


def test_stylize_without_a_person_says_no_pose_found(stylize_ctx):
    result = stylize(stylize_ctx, photo("chelsea").resize((96, 64)), style="ghibli")
    assert result.details["control"] == "canny" and result.details["pose"]["fallback"] == "canny"
    assert result.warnings[0].startswith("no_pose_found")
    with pytest.raises(InvalidParams, match="output_keypoints"):
        stylize(stylize_ctx, photo("chelsea"), style="noir", output_keypoints=True)
