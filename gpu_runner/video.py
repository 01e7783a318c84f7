"""Video in and out with the FFmpeg that PyAV's wheels bundle (libx264 included), frame by frame.

``transform_video`` decodes an upload, checks it against the limits, hands each frame to a
function (a recipe, in the ``video`` recipe), optionally blends in the previous output frame
warped by optical flow (temporal consistency), encodes the result as an MP4 and copies the
audio packets across unchanged. Nothing here knows about recipes or the bucket.

Needs the ``video`` extra (``av``); importing this module does not, so the recipe registry
loads on runners without it.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from bucketbrush.errors import (
    InvalidVideo,
    JobCancelled,
    VideoFpsTooHigh,
    VideoTooLarge,
    VideoTooLong,
    VideoTooManyFrames,
)

if TYPE_CHECKING:
    from bucketbrush.settings import Settings

# Demuxers we accept, by FFmpeg's name, and what people call them. Anything else (a PNG,
# which FFmpeg would happily read as a one-frame "video", a text file) is invalid_video.
CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "webm", "gif": "gif", "avi": "avi"}
# Audio codecs the MP4 muxer takes as they are; any other audio is re-encoded to AAC.
MP4_AUDIO = frozenset({"aac", "mp3", "opus", "alac", "ac3", "eac3", "flac"})
# Output codecs in order of preference: H.264 where the FFmpeg build has libx264.
VIDEO_CODECS = (("libx264", "h264"), ("mpeg4", "mpeg4"))


@dataclass(frozen=True)
class VideoLimits:
    max_duration_s: float = 120
    max_frames: int = 3600
    max_side: int = 1920
    max_fps: float = 60

    @classmethod
    def from_settings(cls, settings: Settings | None) -> VideoLimits:
        if settings is None:
            return cls()
        return cls(settings.video_max_duration_s, settings.video_max_frames, settings.video_max_side,
                   settings.video_max_fps)


@dataclass
class VideoInfo:
    """What the input's headers say (``frames`` may be 0 when the container does not know)."""

    container: str
    codec: str
    width: int
    height: int
    fps: Fraction
    frames: int
    duration_s: float
    audio_codec: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"container": self.container, "codec": self.codec, "width": self.width, "height": self.height,
                "fps": round(float(self.fps), 3), "frames": self.frames, "duration_s": round(self.duration_s, 3),
                "audio_codec": self.audio_codec}


@dataclass
class VideoOutput:
    data: bytes
    poster: np.ndarray
    width: int
    height: int
    fps: Fraction
    frames: int
    codec: str
    audio: str  # "copy", "transcoded" or "none"
    audio_codec: str | None
    input: VideoInfo
    flicker: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.frames / float(self.fps)

    def details(self) -> dict[str, Any]:
        return {"fps": round(float(self.fps), 3), "fps_fraction": str(self.fps), "frames": self.frames,
                "duration_s": round(self.duration_s, 3), "codec": self.codec, "width": self.width,
                "height": self.height, "audio": self.audio, "audio_codec": self.audio_codec,
                "input": self.input.as_dict()}


def _av() -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the install
        from bucketbrush.errors import ModelUnavailable

        raise ModelUnavailable("video needs PyAV on this runner: install the `video` extra (pip install av)") from exc
    return av


def open_video(data: bytes, limits: VideoLimits) -> tuple[Any, VideoInfo]:
    """The open container and what its headers say, checked against ``limits`` (before any
    frame is decoded). Raises InvalidVideo or a limit error."""
    av = _av()
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise InvalidVideo(f"the upload is not a video FFmpeg can read ({exc.__class__.__name__})") from exc
    try:
        info = _probe(container)
        check_limits(info, limits)
    except BaseException:
        container.close()
        raise
    return container, info


def _probe(container: Any) -> VideoInfo:
    fmt = container.format.name
    if fmt not in CONTAINERS:
        raise InvalidVideo(f"{fmt!r} is not a video container this recipe takes "
                           f"({', '.join(sorted(set(CONTAINERS.values())))})")
    if not container.streams.video:
        raise InvalidVideo("the file has no video stream (no frames)")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if not ctx.width or not ctx.height:
        raise InvalidVideo("the video stream has no frame size (corrupt header)")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise InvalidVideo("the video has no frame rate")
    fps = Fraction(rate).limit_denominator(100_000)
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    else:
        duration = (stream.frames or 0) / float(fps)
    audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
    return VideoInfo(container=CONTAINERS[fmt], codec=ctx.name, width=ctx.width, height=ctx.height, fps=fps,
                     frames=int(stream.frames or 0), duration_s=duration, audio_codec=audio)


def check_limits(info: VideoInfo, limits: VideoLimits) -> None:
    if max(info.width, info.height) > limits.max_side:
        raise VideoTooLarge(f"the video is {info.width}x{info.height}; the limit is {limits.max_side} px per side")
    if float(info.fps) > limits.max_fps:
        raise VideoFpsTooHigh(f"the video runs at {float(info.fps):.2f} fps; the limit is {limits.max_fps:g}")
    if info.duration_s > limits.max_duration_s:
        raise VideoTooLong(f"the video lasts {info.duration_s:.1f} s; the limit is {limits.max_duration_s:g} s")
    if info.frames > limits.max_frames:
        raise VideoTooManyFrames(f"the video has {info.frames} frames; the limit is {limits.max_frames}")


class TemporalBlender:
    """Blends the previous output frame, warped onto the current one by optical flow
    (OpenCV Farneback on the input frames), into each new output frame.

    ``weight`` is the share of the warped previous frame where the flow explains the input
    well; it falls off where it does not (occlusions, cuts: the warped previous input differs
    from the current input), so a scene change is not smeared. The blended frame becomes the
    next "previous", so the smoothing is recursive.
    """

    def __init__(self, weight: float, *, flow_side: int = 320, tolerance: float = 12.0) -> None:
        if not 0 <= weight < 1:
            raise ValueError("weight must be in [0, 1)")
        self.weight = weight
        self.flow_side = flow_side
        self.tolerance = tolerance
        self._prev_in: np.ndarray | None = None
        self._prev_out: np.ndarray | None = None

    def __call__(self, frame_in: np.ndarray, frame_out: np.ndarray) -> np.ndarray:
        if self.weight == 0:
            return frame_out
        h, w = frame_out.shape[:2]
        current = cv2.resize(frame_in, (w, h), interpolation=cv2.INTER_AREA) if frame_in.shape[:2] != (h, w) \
            else frame_in
        out = frame_out
        if self._prev_out is not None and self._prev_out.shape == frame_out.shape:
            assert self._prev_in is not None
            flow = self._flow(current, self._prev_in)
            grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
            warped_out = cv2.remap(self._prev_out, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            warped_in = cv2.remap(self._prev_in, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            error = np.abs(current.astype(np.float32) - warped_in.astype(np.float32)).mean(axis=2)
            alpha = (self.weight * np.exp(-((error / self.tolerance) ** 2)))[..., None]
            out = (frame_out.astype(np.float32) * (1 - alpha) + warped_out.astype(np.float32) * alpha)
            out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        self._prev_in, self._prev_out = current, out
        return out

    def _flow(self, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Per pixel of ``current``: where it was in ``previous`` (x, y offsets, full size)."""
        h, w = current.shape[:2]
        scale = min(1.0, self.flow_side / max(h, w))
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        a = cv2.cvtColor(cv2.resize(current, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        b = cv2.cvtColor(cv2.resize(previous, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        if size != (w, h):
            flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
            flow[..., 0] *= w / size[0]
            flow[..., 1] *= h / size[1]
        return flow


class FlickerMeter:
    """Flicker: the mean absolute change (0-255) between consecutive output frames, over the
    pixels whose input barely changed (mean channel change under ``still`` levels)."""

    def __init__(self, still: float = 3.0) -> None:
        self.still = still
        self._prev: tuple[np.ndarray, np.ndarray] | None = None
        self._sum = 0.0
        self._count = 0

    def add(self, frame_in: np.ndarray, frame_out: np.ndarray) -> None:
        h, w = frame_out.shape[:2]
        if frame_in.shape[:2] != (h, w):
            frame_in = cv2.resize(frame_in, (w, h), interpolation=cv2.INTER_AREA)
        cur_in, cur_out = frame_in.astype(np.int16), frame_out.astype(np.int16)
        if self._prev is not None and self._prev[1].shape == cur_out.shape:
            still = np.abs(cur_in - self._prev[0]).mean(axis=2) < self.still
            if still.any():
                change = np.abs(cur_out - self._prev[1]).mean(axis=2)
                self._sum += float(change[still].sum())
                self._count += int(still.sum())
        self._prev = (cur_in, cur_out)

    @property
    def value(self) -> float | None:
        return self._sum / self._count if self._count else None


class _Writer:
    """An MP4 in a temporary file (the MP4 muxer needs to seek for +faststart)."""

    def __init__(self, path: Path, fps: Fraction, width: int, height: int, crf: int, audio: Any | None) -> None:
        av = _av()
        self.container = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self.codec = None
        for encoder, name in VIDEO_CODECS:
            try:
                self.stream = self.container.add_stream(encoder, rate=fps)
            except (av.error.FFmpegError, ValueError):
                continue
            self.codec = name
            break
        if self.codec is None:  # pragma: no cover - every PyAV wheel has mpeg4
            raise RuntimeError("no usable video encoder in this FFmpeg build")
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        if self.codec == "h264":
            self.stream.options = {"crf": str(crf), "preset": "fast"}
        self.width, self.height = width, height
        self.frames = 0
        self.audio_mode, self.audio_codec = "none", None
        self.audio_out = self.resampler = None
        if audio is not None:
            name = audio.codec_context.name
            if name in MP4_AUDIO:
                self.audio_out = self.container.add_stream_from_template(audio)
                self.audio_mode, self.audio_codec = "copy", name
            else:
                self.audio_out = self.container.add_stream("aac", rate=audio.codec_context.sample_rate or 48000)
                self.resampler = av.AudioResampler(format="fltp", layout=self.audio_out.layout,
                                                   rate=self.audio_out.rate)
                self.audio_mode, self.audio_codec = "transcoded", "aac"

    def write(self, rgb: np.ndarray) -> None:
        av = _av()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        self.frames += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def audio_packet(self, packet: Any) -> None:
        if self.audio_out is None or packet.dts is None:
            return
        if self.resampler is None:
            packet.stream = self.audio_out
            self.container.mux(packet)
            return
        for frame in packet.decode():
            self._encode_audio(self.resampler.resample(frame))

    def _encode_audio(self, frames: list[Any]) -> None:
        for frame in frames:
            frame.pts = None
            for packet in self.audio_out.encode(frame):
                self.container.mux(packet)

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - a half-written temporary file is thrown away anyway
            pass

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        if self.resampler is not None:
            self._encode_audio(self.resampler.resample(None))
            for packet in self.audio_out.encode(None):
                self.container.mux(packet)
        self.container.close()


def _even(value: int) -> int:
    return max(2, value - value % 2)


def transform_video(
    data: bytes,
    process: Callable[[np.ndarray, int], np.ndarray],
    *,
    limits: VideoLimits,
    temporal_weight: float = 0.0,
    crf: int = 23,
    max_side: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    measure_flicker: bool = False,
) -> VideoOutput:
    """Decode ``data``, run ``process(rgb_frame, index)`` on every frame, blend, encode.

    ``process`` gets and returns HxWx3 uint8 RGB arrays; every output frame is resized to the
    first one's size (even sides, as yuv420p needs). ``progress(done, total)`` is called after
    each frame and ``cancelled()`` checked before each; a cancel raises JobCancelled.
    """
    av = _av()
    container, info = open_video(data, limits)
    blender = TemporalBlender(temporal_weight)
    meter = FlickerMeter() if measure_flicker else None
    warnings: list[str] = []
    vstream = container.streams.video[0]
    vstream.thread_type = "AUTO"
    astream = container.streams.audio[0] if container.streams.audio else None
    total = info.frames or max(1, round(info.duration_s * float(info.fps)))
    pending_audio: list[Any] = []
    writer: _Writer | None = None
    poster: np.ndarray | None = None
    decoded = 0
    with tempfile.TemporaryDirectory(prefix="bucketbrush-video-") as tmp:
        out_path = Path(tmp) / "out.mp4"
        try:
            streams = [vstream] + ([astream] if astream is not None else [])
            for packet in container.demux(*streams):
                if packet.stream.type == "audio":
                    if writer is None:
                        pending_audio.append(packet)
                    else:
                        writer.audio_packet(packet)
                    continue
                for frame in packet.decode():
                    if cancelled and cancelled():
                        raise JobCancelled("cancelled by the user")
                    decoded += 1
                    if decoded > limits.max_frames:
                        raise VideoTooManyFrames(f"the video has more than {limits.max_frames} frames (the limit)")
                    if decoded / float(info.fps) > limits.max_duration_s + 1 / float(info.fps):
                        raise VideoTooLong(f"the video lasts more than {limits.max_duration_s:g} s (the limit)")
                    rgb = frame.to_ndarray(format="rgb24")
                    if max_side and max(rgb.shape[:2]) > max_side:
                        scale = max_side / max(rgb.shape[:2])
                        size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
                        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                    out = process(rgb, decoded - 1)
                    if writer is None:
                        writer = _Writer(out_path, info.fps, _even(out.shape[1]), _even(out.shape[0]), crf, astream)
                        for held in pending_audio:
                            writer.audio_packet(held)
                        pending_audio.clear()
                    if out.shape[:2] != (writer.height, writer.width):
                        out = cv2.resize(out, (writer.width, writer.height), interpolation=cv2.INTER_AREA)
                    out = blender(rgb, out)
                    if meter is not None:
                        meter.add(rgb, out)
                    if poster is None:
                        poster = out
                    writer.write(out)
                    if progress:
                        total = max(total, decoded)  # headers without a frame count: an estimate
                        progress(decoded, total)
            if writer is None or poster is None:
                raise InvalidVideo("the video has no frames")
            # Edit lists may hide a frame or two that the header counts; more missing is damage.
            if info.frames and decoded < info.frames - max(2, 0.02 * info.frames):
                raise InvalidVideo(f"the video is truncated or corrupt: {decoded} of {info.frames} frames decoded")
            if decoded < info.frames:
                warnings.append(f"{decoded} of the {info.frames} frames the header counts were decoded")
            writer.close()
        except av.error.FFmpegError as exc:
            if writer is not None:
                writer.abort()
            raise InvalidVideo(f"the video is corrupt or truncated after {decoded} frames: {exc}") from exc
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            container.close()
        if writer.audio_mode == "transcoded":
            warnings.append(f"the audio ({info.audio_codec}) does not fit in an MP4 as it is; re-encoded to AAC")
        encoded = out_path.read_bytes()
    return VideoOutput(data=encoded, poster=poster, width=writer.width, height=writer.height, fps=info.fps,
                       frames=writer.frames, codec=writer.codec or "", audio=writer.audio_mode,
                       audio_codec=writer.audio_codec, input=info,
                       flicker=meter.value if meter else None, warnings=warnings)
