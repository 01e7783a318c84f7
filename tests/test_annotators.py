"""Weight-free ControlNet annotators on real photos (scikit-image's shipped samples).

The ranges were measured on these photos (see each test) and given headroom; they check
that each map has the character ControlNet expects, not exact pixels.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data as skdata  # a dev dependency: missing, it fails the run (never skips)
from PIL import Image
from skimage.morphology import skeletonize

from bucketbrush.errors import InvalidParams, JobError
from gpu_runner import annotators as A
from gpu_runner.recipes import annotate
from gpu_runner.recipes.base import JobContext
from gpu_runner.runner import resolve_params


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())  # 512x512 RGB


@pytest.fixture(scope="module")
def camera() -> Image.Image:
    return Image.fromarray(skdata.camera()).convert("RGB")  # 512x512 grey


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(skdata.coffee())  # 600x400 RGB


def plane(image: Image.Image) -> np.ndarray:
    """The first channel of an annotator's output, after checking it is a grey RGB image."""
    a = np.asarray(image)
    assert image.mode == "RGB" and a.ndim == 3
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
    return a[..., 0]


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a boolean line drawing: its area over its skeleton's length."""
    return float(mask.sum()) / max(int(skeletonize(mask).sum()), 1)


# -- canny --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee"])
def test_canny_density_is_plausible_and_follows_thresholds(name, request):
    image = request.getfixturevalue(name)
    densities = []
    for low, high in [(50, 100), (100, 200), (200, 300)]:
        edges = plane(A.canny(image, low, high))
        assert set(np.unique(edges)) <= {0, 255}
        densities.append(float((edges == 255).mean()))
    # Measured 11-15% / 7.5-8.5% / 3-5% of pixels on these three photos.
    assert 0.04 < densities[1] < 0.15
    assert densities[0] > densities[1] * 1.3 > densities[2] * 1.3


def test_canny_keeps_size_and_finds_nothing_on_a_flat_image():
    flat = Image.new("RGB", (97, 61), (120, 80, 40))
    out = A.canny(flat)
    assert out.size == (97, 61)
    assert plane(out).max() == 0


# -- scribble -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["canny", "xdog"])
def test_scribble_from_photo_is_bold_white_lines_on_black(astronaut, method):
    thin = plane(A.canny(astronaut))
    scribble = plane(A.scribble_from_photo(astronaut, method, line_width=3))
    assert set(np.unique(scribble)) <= {0, 255}
    lines = scribble == 255
    # Measured 15% (canny) and 20% (xdog) of pixels: mostly black, lines bolder than Canny's 1 px.
    assert 0.05 < lines.mean() < 0.35
    assert stroke_width(lines) > 2.0 > stroke_width(thin == 255)


def test_scribble_line_width_controls_stroke_width(camera):
    widths = [stroke_width(plane(A.scribble_from_photo(camera, line_width=w)) == 255) for w in (1, 3, 7)]
    assert widths[0] < widths[1] < widths[2]


def drawn_sketch() -> np.ndarray:
    """A user's sketch: dark 7-9 px marker strokes on white paper."""
    paper = np.full((256, 256, 3), 255, np.uint8)
    cv2.circle(paper, (128, 128), 80, (20, 20, 20), 9)
    cv2.line(paper, (30, 220), (220, 30), (20, 20, 20), 9)
    cv2.rectangle(paper, (40, 40), (100, 90), (30, 30, 30), 7)
    return paper


def test_scribble_from_sketch_thins_strokes_and_inverts_paper():
    sketch = drawn_sketch()
    ink = sketch[..., 0] < 128
    out = plane(A.scribble_from_sketch(Image.fromarray(sketch), line_width=3))
    lines = out == 255
    # White on black now: the ink pixels became lines, the paper became background.
    assert lines.any() and (lines & ink).sum() > 0.95 * lines.sum()
    near_a_line = cv2.dilate(lines.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert near_a_line[ink].mean() > 0.9  # every stroke kept
    # Measured: input strokes 12.2 px (area/skeleton), output 3.1 px.
    assert stroke_width(lines) < 0.5 * stroke_width(ink)
    assert 2.0 < stroke_width(lines) < 4.5


def test_scribble_from_sketch_reads_light_on_dark_sketches_alike():
    sketch = drawn_sketch()
    a = plane(A.scribble_from_sketch(Image.fromarray(sketch)))
    b = plane(A.scribble_from_sketch(Image.fromarray(255 - sketch)))
    assert (a == b).mean() > 0.99


def test_scribble_from_sketch_of_a_real_photo_drawing(camera):
    # A pencil-like drawing of a real photo, its lines fattened as a marker would.
    drawing = cv2.erode(plane(A.lineart(camera)), np.ones((5, 5), np.uint8))
    out = plane(A.scribble_from_sketch(Image.fromarray(drawing).convert("RGB")))
    # Measured: 7.2 px in, 3.0 px out.
    assert stroke_width(out == 255) < 0.6 * stroke_width(drawing < 128)


def test_sketch_drawn_on_a_transparent_canvas():
    rgba = np.zeros((128, 128, 4), np.uint8)
    cv2.line(rgba, (10, 64), (118, 64), (0, 0, 0, 255), 9)
    out = plane(A.scribble_from_sketch(Image.fromarray(rgba, "RGBA")))
    rows = np.nonzero(out[:, 64])[0]
    assert 2 <= len(rows) <= 5 and abs(rows.mean() - 64) <= 1


# -- lineart, soft edge -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee"])
def test_lineart_is_dark_lines_on_white(name, request):
    image = request.getfixturevalue(name)
    art = plane(A.lineart(image))
    paper, ink = (art >= 250).mean(), (art < 128).mean()
    # Measured on astronaut: 81% paper, 18% ink.
    assert paper > 0.7
    assert 0.02 < ink < 0.25
    # Ink follows the photo's edges: most ink pixels lie near a Canny edge.
    near_edge = cv2.dilate(plane(A.canny(image)), np.ones((7, 7), np.uint8)) > 0
    assert near_edge[art < 128].mean() > 0.6


def test_lineart_inverted_for_controlnet(astronaut):
    assert np.array_equal(plane(A.lineart(astronaut, white_background=False)), 255 - plane(A.lineart(astronaut)))


def test_soft_edge_is_a_normalised_gradient_map(astronaut):
    soft = plane(A.soft_edge(astronaut))
    # Normalised at the 99.5th percentile: ~0.5% saturates, about half is near black.
    assert 0.002 < (soft == 255).mean() < 0.02
    assert 0.3 < (soft < 10).mean() < 0.8
    assert len(np.unique(soft)) > 100  # soft, not binary
    # Stronger where Canny finds edges than elsewhere.
    edges = plane(A.canny(astronaut)) == 255
    assert soft[edges].mean() > 3 * soft[~edges].mean()


def test_soft_edge_of_flat_image_is_black():
    assert plane(A.soft_edge(Image.new("RGB", (32, 32), (9, 9, 9)))).max() == 0


# -- shuffle ------------------------------------------------------------------------------


def colour_histogram(a: np.ndarray) -> np.ndarray:
    return np.concatenate([np.histogram(a[..., c], 16, (0, 256))[0] for c in range(3)]) / a[..., 0].size


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_shuffle_keeps_colours_and_loses_layout(name, request):
    image = request.getfixturevalue(name)
    src = np.asarray(image)
    out = np.asarray(A.content_shuffle(image, seed=1))
    assert out.shape == src.shape
    # Every output pixel is sampled from the input, so colours stay those of the photo.
    assert np.abs(colour_histogram(out) - colour_histogram(src)).sum() < 0.6 * 3
    mean_gap = np.abs(src.reshape(-1, 3).mean(0) - out.reshape(-1, 3).mean(0))
    assert mean_gap.max() < 40
    # ...but not where they were.
    assert np.abs(src.astype(int) - out).mean() > 30


def test_shuffle_is_repeatable_per_seed(astronaut):
    a = np.asarray(A.content_shuffle(astronaut, seed=7))
    assert np.array_equal(a, np.asarray(A.content_shuffle(astronaut, seed=7)))
    assert not np.array_equal(a, np.asarray(A.content_shuffle(astronaut, seed=8)))


# -- pose ---------------------------------------------------------------------------------

# A standing figure on a 512x512 canvas, joints well apart (the face points overlap a little).
STANDING = {
    "nose": (256, 80), "neck": (256, 150), "right_shoulder": (196, 150), "right_elbow": (170, 230),
    "right_wrist": (150, 300), "left_shoulder": (316, 150), "left_elbow": (342, 230),
    "left_wrist": (362, 300), "right_hip": (220, 300), "right_knee": (215, 390),
    "right_ankle": (210, 480), "left_hip": (292, 300), "left_knee": (297, 390),
    "left_ankle": (302, 480), "right_eye": (240, 64), "left_eye": (272, 64),
    "right_ear": (222, 74), "left_ear": (290, 74),
}


def openpose_json(points=STANDING, canvas=(512, 512), missing=()) -> dict:
    flat = []
    for name in A.KEYPOINT_NAMES:
        x, y = points[name]
        flat += [0, 0, 0] if name in missing else [x, y, 0.9]
    return {"people": [{"pose_keypoints_2d": flat}], "canvas_width": canvas[0], "canvas_height": canvas[1]}


def test_render_openpose_puts_each_joint_colour_at_its_keypoint():
    people = A.parse_openpose_keypoints(json.dumps(openpose_json()).encode())
    out = np.asarray(A.render_openpose(people, 512, 512))
    assert out.shape == (512, 512, 3)
    for i, name in enumerate(A.KEYPOINT_NAMES):
        x, y = STANDING[name]
        assert tuple(out[y, x]) == A.COLORS[i], name
    # Limbs at 60% of their colour: right upper arm (limb 3, shoulder -> elbow) at its midpoint.
    assert tuple(out[190, 183]) == tuple(int(c * 0.6) for c in A.COLORS[2])
    # Mostly black background.
    assert (out.max(axis=2) == 0).mean() > 0.9


def test_render_openpose_scales_from_the_canvas_and_skips_missing_points():
    doc = openpose_json(missing=("left_wrist",))
    out = np.asarray(A.render_openpose(A.parse_openpose_keypoints(doc), 256, 128))
    assert out.shape == (128, 256, 3)
    x, y = STANDING["right_wrist"]
    assert tuple(out[round(y / 4), round(x / 2)]) == A.COLORS[4]
    x, y = STANDING["left_wrist"]
    assert out[round(y / 4), round(x / 2)].max() == 0


def test_plain_list_of_points_and_normalised_coordinates():
    pixels = [list(STANDING[n]) for n in A.KEYPOINT_NAMES]
    normalised = [[x / 512, y / 512, 1.0] for x, y in pixels]
    a = np.asarray(A.render_openpose(A.parse_openpose_keypoints(pixels), 512, 512))
    b = np.asarray(A.render_openpose(A.parse_openpose_keypoints(normalised), 512, 512))
    assert (np.abs(a.astype(int) - b).max(axis=2) > 0).mean() < 0.01


def test_body25_is_mapped_to_coco18():
    coco = openpose_json()["people"][0]["pose_keypoints_2d"]
    body25 = [0.0] * 75
    for coco_index, body_index in enumerate((0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)):
        body25[3 * body_index:3 * body_index + 3] = coco[3 * coco_index:3 * coco_index + 3]
    body25[24:27] = [256, 300, 0.9]  # mid-hip, not in COCO-18
    (person,) = A.parse_openpose_keypoints({"people": [{"pose_keypoints_2d": body25}]})
    assert person.points == tuple((float(x), float(y)) for x, y in (STANDING[n] for n in A.KEYPOINT_NAMES))


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"",
        b'{"persons": []}',
        b'{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}',
        b'{"people": [{"face_keypoints_2d": []}]}',
        json.dumps({"people": [{"pose_keypoints_2d": ["a"] * 54}]}).encode(),
        b'{"people": [{"pose_keypoints_2d": [' + b",".join([b"NaN"] * 54) + b"]}]}",
        json.dumps({"people": [{"pose_keypoints_2d": [0] * 54}]}).encode(),  # nothing visible
        json.dumps({"people": []}).encode(),
        json.dumps({**openpose_json(), "canvas_width": -5}).encode(),
        json.dumps([[1, 2]] * 17).encode(),
        json.dumps([[1, 2, 3, 4]] * 18).encode(),
        json.dumps({"people": [openpose_json()["people"][0]] * 65}).encode(),
        b"42",
    ],
)
def test_malformed_keypoints_raise_invalid_keypoints(data):
    with pytest.raises(A.InvalidKeypoints) as info:
        A.parse_openpose_keypoints(data)
    assert info.value.code == "invalid_keypoints"
    assert isinstance(info.value, JobError)


# -- the recipe ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["canny", "scribble", "sketch", "lineart", "softedge", "shuffle"])
def test_annotate_recipe_returns_one_control_image_of_input_size(coffee, kind):
    params = annotate.AnnotateParams(kind=kind)
    steps = []
    result = annotate.RECIPE.run(JobContext("j", on_progress=lambda s, t: steps.append((s, t))), coffee, params)
    (artifact,) = result.artifacts
    assert artifact.name == kind and artifact.image.size == coffee.size and artifact.image.mode == "RGB"
    assert steps[-1] == (1, 1)


def test_annotate_pose_from_inline_keypoints_and_from_a_bucket_key(astronaut):
    doc = openpose_json()
    inline = annotate.AnnotateParams(kind="pose", keypoints=doc)
    a = annotate.RECIPE.run(JobContext("j"), astronaut, inline).artifacts[0].image

    loaded = []
    ctx = JobContext("j", load_bytes=lambda key: loaded.append(key) or json.dumps(doc).encode())
    by_key = annotate.AnnotateParams(kind="pose", keypoints_key="poses/standing.json")
    b = annotate.RECIPE.run(ctx, astronaut, by_key).artifacts[0].image
    assert loaded == ["poses/standing.json"]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert tuple(np.asarray(a)[80, 256]) == A.COLORS[0]


def test_annotate_pose_from_metadata_json_text(astronaut):
    params = resolve_params(annotate.RECIPE, {}, {"kind": "pose", "keypoints": json.dumps(openpose_json())})
    out = annotate.RECIPE.run(JobContext("j"), astronaut, params).artifacts[0].image
    assert tuple(np.asarray(out)[300, 150]) == A.COLORS[4]


def test_annotate_pose_with_bad_keypoints_fails_with_the_stable_code(astronaut):
    params = annotate.AnnotateParams(kind="pose", keypoints={"people": [{"pose_keypoints_2d": [1]}]})
    with pytest.raises(JobError) as info:
        annotate.RECIPE.run(JobContext("j"), astronaut, params)
    assert info.value.code == "invalid_keypoints"


@pytest.mark.parametrize(
    "params",
    [
        {"kind": "pose", "keypoints": [], "keypoints_key": "k.json"},  # both
        {"kind": "pose", "keypoints_key": "k.json", "output_keypoints": True},  # detection knob, pose given
        {"kind": "pose", "max_people": 0},
        {"kind": "canny", "output_keypoints": True},
        {"kind": "canny", "keypoints_key": "k.json"},  # another kind's knob
        {"kind": "lineart", "line_width": 3},
        {"kind": "canny", "low_threshold": 250, "high_threshold": 100},
        {"kind": "depth"},
        {"kind": "canny", "bogus": 1},
    ],
)
def test_annotate_params_fail_early(params):
    with pytest.raises(InvalidParams):
        resolve_params(annotate.RECIPE, params, {})
