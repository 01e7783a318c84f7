"""``annotate``: a ControlNet control image (edges, scribble, line art, shuffle, pose).

Everything but pose needs no model. A pose map is drawn from keypoints the job gives
(``keypoints`` inline or ``keypoints_key`` in the bucket), or, with neither, from the people
MediaPipe's BlazePose finds in the photo (``gpu_runner/pose.py``; the ``pose`` extra). When
nobody is found the job still succeeds: a ``no_pose_found`` warning and the canny edges instead.
"""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import Field, model_validator

from gpu_runner import annotators, pose
from gpu_runner.recipes.base import Artifact, JobContext, Recipe, RecipeParams, RecipeResult

Kind = Literal["canny", "scribble", "sketch", "lineart", "softedge", "shuffle", "pose"]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]

# Which knobs each kind reads; setting another kind's knob is an error, not silently ignored.
_KNOBS: dict[str, frozenset[str]] = {
    "canny": frozenset({"low_threshold", "high_threshold"}),
    "scribble": frozenset({"scribble_method", "line_width"}),
    "sketch": frozenset({"line_width"}),
    "lineart": frozenset({"invert"}),
    "softedge": frozenset(),
    "shuffle": frozenset({"seed"}),
    "pose": frozenset({"keypoints", "keypoints_key", "max_people", "output_keypoints"}),
}
_ALL_KNOBS = frozenset().union(*_KNOBS.values())
_DETECTION_KNOBS = frozenset({"max_people", "output_keypoints"})


class AnnotateParams(RecipeParams):
    kind: Kind = "canny"
    low_threshold: int = Field(default=100, ge=0, le=1000, description="canny: lower hysteresis threshold")
    high_threshold: int = Field(default=200, ge=0, le=1000, description="canny: upper hysteresis threshold")
    scribble_method: Literal["canny", "xdog"] = Field(default="canny", description="scribble: edge detector")
    line_width: int = Field(default=3, ge=1, le=25, description="scribble/sketch: stroke width in px")
    invert: bool = Field(default=False, description="lineart: white lines on black (ControlNet lineart)")
    seed: int = Field(default=0, ge=0, lt=2**32, description="shuffle: random flow seed")
    keypoints: dict[str, Any] | list[Any] | str | None = Field(
        default=None, description="pose: OpenPose JSON (object, list of 18 [x, y], or JSON text)"
    )
    keypoints_key: str | None = Field(
        default=None, min_length=1, max_length=1024, description="pose: bucket key of an OpenPose JSON file"
    )
    max_people: int = Field(default=pose.DEFAULT_MAX_PEOPLE, ge=1, le=pose.MAX_PEOPLE,
                            description="pose, detected: at most this many people, best first")
    output_keypoints: bool = Field(
        default=False, description="pose, detected: also write the keypoints as OpenPose JSON (keypoints.json)")

    @model_validator(mode="after")
    def _check_knobs(self) -> AnnotateParams:
        foreign = sorted((self.model_fields_set & _ALL_KNOBS) - _KNOBS[self.kind])
        if foreign:
            raise ValueError(f"{', '.join(foreign)} do not apply to kind={self.kind!r}")
        if self.kind == "canny" and self.low_threshold > self.high_threshold:
            raise ValueError("low_threshold must not exceed high_threshold")
        if self.kind == "pose" and self.keypoints is not None and self.keypoints_key is not None:
            raise ValueError("kind='pose' takes keypoints or keypoints_key, not both (neither: detect the pose)")
        given = self.keypoints is not None or self.keypoints_key is not None
        if given and self.model_fields_set & _DETECTION_KNOBS:
            knobs = ", ".join(sorted(self.model_fields_set & _DETECTION_KNOBS))
            raise ValueError(f"{knobs} apply only when the pose is detected (no keypoints or keypoints_key)")
        return self


def _detected_pose(image: Image.Image, params: AnnotateParams) -> RecipeResult:
    result = pose.detect_poses(image, params.max_people)
    details: dict[str, Any] = {"pose": result.details()}
    warnings: list[str] = []
    if result.people:
        artifacts: list[Artifact] = [
            Artifact(name="pose", image=annotators.render_openpose(result.skeletons(), image.width, image.height))]
    else:
        warnings.append(pose.no_pose_warning("the control image is the canny edges instead (canny.png)"))
        details["pose"]["fallback"] = "canny"
        artifacts = [Artifact(name="canny", image=annotators.canny(image, params.low_threshold, params.high_threshold))]
    if params.output_keypoints:
        artifacts.append(Artifact.json("keypoints", result.openpose_json()))
    return RecipeResult(artifacts=artifacts, warnings=warnings, details=details)


def annotate(ctx: JobContext, image: Image.Image, params: AnnotateParams) -> Image.Image:
    """The control image of ``params.kind`` for ``image`` (whose size a pose map takes); a
    pose from the job's keypoints (detection is ``run``'s)."""
    match params.kind:
        case "canny":
            return annotators.canny(image, params.low_threshold, params.high_threshold)
        case "scribble":
            return annotators.scribble_from_photo(image, params.scribble_method, params.line_width)
        case "sketch":
            return annotators.scribble_from_sketch(image, params.line_width)
        case "lineart":
            return annotators.lineart(image, white_background=not params.invert)
        case "softedge":
            return annotators.soft_edge(image)
        case "shuffle":
            return annotators.content_shuffle(image, params.seed)
        case "pose":
            source = params.keypoints if params.keypoints is not None else ctx.load_bytes(params.keypoints_key)
            people = annotators.parse_openpose_keypoints(source)
            return annotators.render_openpose(people, image.width, image.height)
    raise AssertionError(params.kind)


def run(ctx: JobContext, image: Image.Image | None, params: AnnotateParams) -> RecipeResult:
    assert image is not None
    ctx.progress(0, 1)
    if params.kind == "pose" and params.keypoints is None and params.keypoints_key is None:
        result = _detected_pose(image, params)
    else:
        details = {"pose": {"source": "keypoints"}} if params.kind == "pose" else {}
        result = RecipeResult(artifacts=[Artifact(name=params.kind, image=annotate(ctx, image, params))],
                              details=details)
    ctx.progress(1, 1)
    return result


RECIPE = Recipe(
    name="annotate",
    description="ControlNet control images: " + ", ".join(KINDS) + " (pose from keypoints, or detected with BlazePose)",
    params=AnnotateParams,
    run=run,
)
