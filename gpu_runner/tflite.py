"""The MediaPipe models the ``mediapipe`` wheel ships, run with LiteRT (``ai-edge-litert``).

Pose detection, pose landmarks and selfie segmentation are TFLite files inside the
``mediapipe==0.10.21`` wheel (Apache-2.0, Google). mediapipe itself needs numpy<2, so it is
installed with ``--no-deps`` and never imported: the files are found through the package's
install record (``importlib.metadata``). The interpreter is ``ai_edge_litert`` (works with
numpy 2). Each model is loaded once per process and kept; calls are serialised per model
(a TFLite interpreter is not thread-safe).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bucketbrush.errors import ModelUnavailable

WHEEL = "mediapipe"
WHEEL_VERSION = "0.10.21"
RUNTIME = "ai-edge-litert"
INSTALL_HINT = (f"install the pose extra: pip install 'bucketbrush[pose]' and "
                f"pip install --no-deps {WHEEL}=={WHEEL_VERSION} (--no-deps: mediapipe pins numpy<2); "
                f"`make install` does both")

# Model name -> (path inside the wheel, input shape, output shapes in the model's order).
MODELS: dict[str, tuple[str, tuple[int, ...], tuple[tuple[int, ...], ...]]] = {
    "pose_detection": ("mediapipe/modules/pose_detection/pose_detection.tflite",
                       (1, 224, 224, 3), ((1, 2254, 12), (1, 2254, 1))),
    "pose_landmark_full": ("mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
                           (1, 256, 256, 3), ((1, 195), (1, 1), (1, 256, 256, 1), (1, 64, 64, 39), (1, 117))),
    "selfie_segmentation": ("mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                            (1, 256, 256, 3), ((1, 256, 256, 1),)),
}


@dataclass
class TFLiteModel:
    """One loaded model. Call it with a float32 NHWC batch; returns its outputs in order."""

    name: str
    path: Path
    sha256: str
    interpreter: Any
    # Tensor indices, fixed once the interpreter is allocated (read once in _load).
    input_index: int
    output_indices: tuple[int, ...]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(batch, dtype=np.float32))
            self.interpreter.invoke()
            return [self.interpreter.get_tensor(i).copy() for i in self.output_indices]

    def describe(self) -> dict[str, Any]:
        """The manifest's record of this model."""
        return {"id": self.name, "file": MODELS[self.name][0], "weights_sha256": self.sha256,
                "source": f"{WHEEL} {_version(WHEEL)} wheel", "license": "Apache-2.0",
                "runtime": f"{RUNTIME} {_version(RUNTIME)}", "device": "cpu"}


_loaded: dict[str, TFLiteModel] = {}
_lock = threading.Lock()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def model_path(name: str) -> Path:
    """Where the wheel installed ``name``'s file; ModelUnavailable when it is not installed."""
    relative = MODELS[name][0]
    try:
        files = metadata.files(WHEEL) or []
    except metadata.PackageNotFoundError:
        raise ModelUnavailable(f"the {name} model comes from the {WHEEL} wheel, which is not installed; "
                               f"{INSTALL_HINT}") from None
    for record in files:
        if str(record) == relative:
            path = Path(str(record.locate()))
            if path.is_file():
                return path
    raise ModelUnavailable(f"the installed {WHEEL} {_version(WHEEL)} has no {relative}; {INSTALL_HINT}")


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ModelUnavailable(f"the TFLite runtime ({RUNTIME}) is not installed; {INSTALL_HINT}") from None
    return Interpreter


def load(name: str) -> TFLiteModel:
    """The named model (a key of MODELS), loaded once per process and kept.

    Raises ModelUnavailable (code ``model_unavailable``) when the wheel or the runtime is
    missing, or when the file is not the model this code expects (another mediapipe version).
    """
    with _lock:
        if name not in _loaded:
            _loaded[name] = _load(name)
        return _loaded[name]


def _load(name: str) -> TFLiteModel:
    path = model_path(name)
    interpreter_class = _interpreter_class()
    try:
        interpreter = interpreter_class(model_path=str(path))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelUnavailable(f"LiteRT could not load {path.name}: {exc}") from exc
    _, input_shape, output_shapes = MODELS[name]
    inp, outs = interpreter.get_input_details()[0], interpreter.get_output_details()
    got_in = tuple(int(d) for d in inp["shape"])
    got_out = tuple(tuple(int(d) for d in o["shape"]) for o in outs)
    if got_in != input_shape or got_out != output_shapes:
        raise ModelUnavailable(f"{path.name} has input {got_in} and outputs {got_out}, not the "
                               f"{WHEEL} {WHEEL_VERSION} model this runner decodes; {INSTALL_HINT}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return TFLiteModel(name, path, digest, interpreter, int(inp["index"]), tuple(int(o["index"]) for o in outs))


def available() -> str | None:
    """None when the runtime and every model are present, else why not (for warnings)."""
    try:
        _interpreter_class()
        for name in MODELS:
            model_path(name)
    except ModelUnavailable as exc:
        return exc.message
    return None


def clear() -> None:
    """Forget every loaded model (tests)."""
    with _lock:
        _loaded.clear()
