"""The video pipeline without servers: decode, limits, per-frame recipe, blend, encode, audio."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from bucketbrush.errors import InvalidParams, InvalidVideo, JobCancelled, UnknownRecipe
from gpu_runner.recipes import get_recipe
from gpu_runner.recipes.base import Artifact, JobContext
from gpu_runner.recipes.filter import apply_filter
from gpu_runner.video import FlickerMeter, VideoLimits, transform_video
from gpu_runner.video_samples import sample_clip

LIMITS = VideoLimits()


def identity(rgb: np.ndarray, index: int) -> np.ndarray:
    return rgb


def cartoon(rgb: np.ndarray, index: int) -> np.ndarray:
    return np.asarray(apply_filter(Image.fromarray(rgb), "cartoon"))


def decode(data: bytes) -> tuple[av.container.InputContainer, list[np.ndarray]]:
    container = av.open(io.BytesIO(data))
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return container, frames


def audio_packets(data: bytes) -> list[bytes]:
    with av.open(io.BytesIO(data)) as container:
        return [bytes(p) for p in container.demux(audio=0) if p.dts is not None]


@pytest.fixture(scope="module")
def clip() -> bytes:
    return sample_clip(2.0, fps=24, size=(160, 120))


def test_frames_fps_codec_and_audio_copied(clip):
    out = transform_video(clip, identity, limits=LIMITS)
    assert (out.frames, out.fps, out.codec, out.audio, out.audio_codec) == (48, 24, "h264", "copy", "aac")
    assert out.details()["duration_s"] == 2.0 and out.input.frames == 48
    container, frames = decode(out.data)
    assert container.streams.video[0].codec_context.name == "h264"
    assert container.streams.video[0].average_rate == 24
    assert len(frames) == 48 and frames[0].shape == (120, 160, 3)
    # The audio packets are the input's, byte for byte.
    assert audio_packets(out.data) == audio_packets(clip) and len(audio_packets(clip)) > 40
    # Identity processing keeps the picture (H.264 at crf 23: within a few levels).
    _, source = decode(clip)
    assert np.abs(frames[10].astype(int) - source[10].astype(int)).mean() < 4
    assert out.poster.shape == (120, 160, 3)


@pytest.mark.parametrize("container", ["webm", "gif", "mov"])
def test_other_containers(container):
    data = sample_clip(1.0, fps=12, size=(96, 64), container=container)
    out = transform_video(data, identity, limits=LIMITS)
    assert out.frames == 12 and out.codec == "h264"
    assert out.audio == ("none" if container == "gif" else "copy")
    if container == "webm":
        assert out.audio_codec == "opus" and audio_packets(out.data) == audio_packets(data)


def test_audio_that_mp4_cannot_hold_is_reencoded_with_a_warning():
    data = sample_clip(1.0, fps=12, size=(64, 48), container="mov", audio_codec="pcm_s16le")
    out = transform_video(data, identity, limits=LIMITS)
    assert (out.audio, out.audio_codec) == ("transcoded", "aac")
    assert "re-encoded to AAC" in out.warnings[0]
    with av.open(io.BytesIO(out.data)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    assert abs(samples - 48000) < 2048  # one second at 48 kHz, plus the encoder's priming


def test_output_size_follows_the_processed_frames(clip):
    # A recipe that changes the size (diffusion does): every frame takes the first one's, even sides.
    out = transform_video(clip, lambda rgb, i: rgb[: 61 + i % 3, :99], limits=LIMITS)
    assert (out.width, out.height) == (98, 60)
    _, frames = decode(out.data)
    assert {f.shape for f in frames} == {(60, 98, 3)}


def test_max_side_downscales_first(clip):
    seen = []
    out = transform_video(clip, lambda rgb, i: seen.append(rgb.shape) or rgb, limits=LIMITS, max_side=80)
    assert set(seen) == {(60, 80, 3)} and (out.width, out.height) == (80, 60)


def test_temporal_blend_reduces_flicker_on_a_noisy_clip(clip):
    plain = transform_video(clip, cartoon, limits=LIMITS, temporal_weight=0.0, measure_flicker=True)
    blended = transform_video(clip, cartoon, limits=LIMITS, temporal_weight=0.5, measure_flicker=True)
    assert plain.flicker is not None and blended.flicker is not None
    assert blended.flicker < 0.85 * plain.flicker, (plain.flicker, blended.flicker)


def test_blend_does_not_smear_a_cut():
    # Frame 2 is a different scene: the flow cannot explain it, so nothing of frame 1 leaks in.
    from gpu_runner.video import TemporalBlender

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    blender = TemporalBlender(0.9)
    blender(a, a)
    out = blender(b, b)
    assert np.abs(out.astype(int) - b.astype(int)).mean() < 3


def test_flicker_meter_counts_only_still_pixels():
    meter = FlickerMeter(still=3)
    still = np.zeros((8, 8, 3), np.uint8)
    meter.add(still, still)
    meter.add(still, np.full_like(still, 10))
    assert meter.value == 10
    moving = FlickerMeter(still=3)
    moving.add(still, still)
    moving.add(still + 50, still + 10)
    assert moving.value is None


def test_progress_counts_frames_and_cancel_stops_between_frames(clip):
    seen: list[tuple[int, int]] = []
    out = transform_video(clip, identity, limits=LIMITS, progress=lambda s, t: seen.append((s, t)))
    assert seen == [(i, 48) for i in range(1, 49)] and out.frames == 48
    processed = []
    with pytest.raises(JobCancelled):
        transform_video(clip, lambda rgb, i: processed.append(i) or rgb, limits=LIMITS,
                        cancelled=lambda: len(processed) >= 5)
    assert processed == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("limits,code", [
    (VideoLimits(max_duration_s=1.5), "video_too_long"),
    (VideoLimits(max_frames=40), "video_too_many_frames"),
    (VideoLimits(max_side=100), "video_too_large"),
    (VideoLimits(max_fps=20), "video_fps_too_high"),
])
def test_limits_refuse_before_decoding(clip, limits, code):
    processed = []
    with pytest.raises(Exception) as info:
        transform_video(clip, lambda rgb, i: processed.append(i) or rgb, limits=limits)
    assert info.value.code == code
    assert processed == []  # checked from the headers, before any frame


def test_frame_limit_also_holds_while_decoding():
    # A WebM's header has no frame count: the limit is enforced as frames are decoded.
    data = sample_clip(1.0, fps=10, size=(32, 24), container="webm")
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].frames == 0
    processed = []
    with pytest.raises(Exception) as info:
        transform_video(data, lambda rgb, i: processed.append(i) or rgb, limits=VideoLimits(max_frames=4))
    assert info.value.code == "video_too_many_frames" and len(processed) == 4


def zero_frame_mp4() -> bytes:
    buf = io.BytesIO()
    out = av.open(buf, "w", format="mp4")
    stream = out.add_stream("libx264", rate=24)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    out.start_encoding()
    out.close()
    return buf.getvalue()


def audio_only_mp4() -> bytes:
    full = sample_clip(1.0, fps=12, size=(32, 24))
    buf = io.BytesIO()
    with av.open(io.BytesIO(full)) as src, av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(audio=0):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return buf.getvalue()


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "PNG")
    return buf.getvalue()


BAD = {
    "truncated": lambda clip: clip[: len(clip) // 2],
    "truncated_faststart": lambda clip: transform_video(clip, identity, limits=LIMITS).data[:-3000],
    "zero_frames": lambda clip: zero_frame_mp4(),
    "audio_only": lambda clip: audio_only_mp4(),
    "text": lambda clip: b"this is not a video\n" * 50,
    "png_image": lambda clip: png(),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_videos_are_invalid_video(clip, kind):
    with pytest.raises(InvalidVideo):
        transform_video(BAD[kind](clip), identity, limits=LIMITS)


def test_video_recipe_runs_an_image_recipe_per_frame(clip):
    recipe = get_recipe("video")
    seen = []
    ctx = JobContext("job", on_progress=lambda s, t: seen.append(s))
    result = recipe.run(ctx, clip, recipe.params.model_validate({"style": "sepia", "temporal_weight": 0}))
    video, poster = result.artifacts
    assert (video.name, video.content_type, video.extension, video.width, video.height) == (
        "video", "video/mp4", "mp4", 160, 120)
    assert poster.name == "poster" and poster.image.size == (160, 120)
    r, g, b = (int(np.asarray(c, dtype=np.int64).sum()) for c in poster.image.split())
    assert r > g > b  # sepia on every frame, the poster is the first
    assert result.details["frame_recipe"] == "filter" and result.details["frame_params"]["style"] == "sepia"
    assert result.details["frames"] == 48 and result.details["audio"] == "copy"
    assert seen[-1] == 48 and result.seeds == []


@pytest.mark.parametrize("params,error", [
    ({"frame_recipe": "video"}, InvalidParams),
    ({"frame_recipe": "txt2img"}, InvalidParams),
    ({"frame_recipe": "nosuch"}, UnknownRecipe),
    ({"style": "nosuch"}, InvalidParams),
    ({"frame_params": {"strength": 0.5}}, InvalidParams),
])
def test_video_recipe_refuses_bad_frame_recipes(clip, params, error):
    recipe = get_recipe("video")
    with pytest.raises(error):
        recipe.run(JobContext("job"), clip, recipe.params.model_validate(params))


def test_video_recipe_gives_diffusion_frames_one_seed():
    from gpu_runner.recipes.video import VideoParams, frame_recipe

    recipe, params, seed = frame_recipe(VideoParams(frame_recipe="img2img", frame_params={"prompt": "x"}))
    assert recipe.name == "img2img" and params.seed == seed is not None
    _, params, seed = frame_recipe(VideoParams(frame_recipe="stylize", style="anime", seed=11))
    assert params.seed == seed == 11 and params.style == "anime"


def test_artifacts_are_an_image_or_encoded_data():
    with pytest.raises(ValueError):
        Artifact(name="x")
    with pytest.raises(ValueError):
        Artifact(name="x", data=b"abc")
    Artifact(name="x", data=b"abc", content_type="video/mp4", extension="mp4")
