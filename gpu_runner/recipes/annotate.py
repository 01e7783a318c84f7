"""``annotate``: a ControlNet control image (edges, scribble, line art, shuffle, pose), no model."""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import Field, model_validator

from gpu_runner import annotators
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
    "pose": frozenset({"keypoints", "keypoints_key"}),
}
_ALL_KNOBS = frozenset().union(*_KNOBS.values())


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

    @model_validator(mode="after")
    def _check_knobs(self) -> AnnotateParams:
        foreign = sorted((self.model_fields_set & _ALL_KNOBS) - _KNOBS[self.kind])
        if foreign:
            raise ValueError(f"{', '.join(foreign)} do not apply to kind={self.kind!r}")
        if self.kind == "canny" and self.low_threshold > self.high_threshold:
            raise ValueError("low_threshold must not exceed high_threshold")
        if self.kind == "pose" and (self.keypoints is None) == (self.keypoints_key is None):
            raise ValueError("kind='pose' needs exactly one of keypoints or keypoints_key")
        return self


def annotate(ctx: JobContext, image: Image.Image, params: AnnotateParams) -> Image.Image:
    """The control image of ``params.kind`` for ``image`` (whose size a pose map takes)."""
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
    out = annotate(ctx, image, params)
    ctx.progress(1, 1)
    return RecipeResult(artifacts=[Artifact(name=params.kind, image=out)])


RECIPE = Recipe(
    name="annotate",
    description="ControlNet control images without weights: " + ", ".join(KINDS),
    params=AnnotateParams,
    run=run,
)
