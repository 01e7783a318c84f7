"""Short sample clips made on the spot (a panning scene, a moving ball, sensor noise and a
tone), so tests, benches and the demo need no video files."""

from __future__ import annotations

import io

import numpy as np

from bucketbrush.samples import landscape


def sample_clip(seconds: float = 2.0, fps: int = 24, size: tuple[int, int] = (160, 120), *, audio: bool = True,
                noise: float = 3.0, container: str = "mp4", pan: float = 1.0, seed: int = 0,
                audio_codec: str | None = None) -> bytes:
    """An encoded clip: H.264 + AAC in MP4, VP9 + Opus in WebM, or a GIF (no audio).

    ``pan`` is the camera's speed in px per frame; ``noise`` the sensor noise (std, levels),
    fresh in every frame, which is what makes per-frame stylisation flicker. ``audio_codec``
    overrides the container's usual one (e.g. ``pcm_s16le`` in a mov).
    """
    import av

    width, height = size
    frames = max(1, round(seconds * fps))
    rng = np.random.default_rng(seed)
    scene = np.asarray(landscape(width + int(pan * frames) + 2, height, seed=seed), dtype=np.float32)
    buf = io.BytesIO()
    fmt = {"mp4": "mp4", "webm": "webm", "gif": "gif", "mov": "mov"}[container]
    out = av.open(buf, mode="w", format=fmt)
    codec, pix_fmt = {"mp4": ("libx264", "yuv420p"), "mov": ("libx264", "yuv420p"),
                      "webm": ("libvpx-vp9", "yuv420p"), "gif": ("gif", "rgb8")}[container]
    video = out.add_stream(codec, rate=fps)
    video.width, video.height, video.pix_fmt = width, height, pix_fmt
    if codec == "libx264":
        video.options = {"crf": "18", "preset": "fast"}
    sound = None
    if audio and container != "gif":
        sound = out.add_stream(audio_codec or ("aac" if container in ("mp4", "mov") else "libopus"), rate=48000)
        sound.layout = "mono"
        sample_format = sound.format.name
    for i in range(frames):
        x = int(pan * i)
        frame = scene[:, x:x + width].copy()
        cx, cy = int(width * (0.2 + 0.6 * i / max(1, frames - 1))), height // 3
        yy, xx = np.ogrid[:height, :width]
        frame[(xx - cx) ** 2 + (yy - cy) ** 2 < (height // 10) ** 2] = (230, 40, 40)
        frame += rng.normal(0, noise, frame.shape) if noise else 0
        vf = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")
        if pix_fmt != "yuv420p":
            vf = vf.reformat(format=pix_fmt)
        vf.pts = i
        for packet in video.encode(vf):
            out.mux(packet)
    for packet in video.encode():
        out.mux(packet)
    if sound is not None:
        rate, chunk = 48000, 960
        t = np.arange(int(rate * frames / fps)) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), chunk):
            samples = tone[start:start + chunk]
            if len(samples) < chunk:
                samples = np.pad(samples, (0, chunk - len(samples)))
            af = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
            af.sample_rate, af.pts = rate, start
            if sample_format != "fltp":
                af = av.AudioResampler(format=sample_format, layout="mono", rate=rate).resample(af)[0]
                af.pts = start
            for packet in sound.encode(af):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    out.close()
    return buf.getvalue()
