"""Transformers vision models (depth estimation, semantic segmentation) named by a setting.

A setting holds a local folder in ``save_pretrained`` layout, or a repo id that is already
in the local Hugging Face cache. Nothing is downloaded, and remote code never runs
(``trust_remote_code`` stays False), so only architectures that transformers ships are
accepted. Each model is loaded once per process and kept (like the upscale networks).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bucketbrush.errors import ModelUnavailable
from gpu_runner.models import WeightsSource

Kind = Literal["depth", "segmentation"]

# What each kind accepts, by transformers auto class (mapping names are read at load time).
_AUTO_CLASSES: Mapping[Kind, tuple[str, ...]] = {
    "depth": ("AutoModelForDepthEstimation",),
    "segmentation": ("AutoModelForSemanticSegmentation", "AutoModelForUniversalSegmentation"),
}
_MAPPINGS = {
    "AutoModelForDepthEstimation": "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES",
    "AutoModelForSemanticSegmentation": "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    "AutoModelForUniversalSegmentation": "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES",
}


@dataclass(frozen=True)
class VisionModel:
    """A loaded model with its image processor, and where it came from."""

    kind: Kind
    source: str
    model: Any
    processor: Any
    device: str
    fingerprint: str

    @property
    def config(self) -> Any:
        return self.model.config

    def describe(self) -> dict[str, Any]:
        """The manifest's record of this model."""
        return {"id": self.source, "type": self.config.model_type, "weights": self.fingerprint,
                "device": self.device, "runtime": "transformers"}


_loaded: dict[tuple[Kind, str, str], VisionModel] = {}
_lock = threading.Lock()


def weights_source(value: str) -> WeightsSource:
    """A path when ``value`` looks like one (``/``, ``.``, ``~``, or an existing folder), else a repo id."""
    if value.startswith(("/", ".", "~")) or Path(value).is_dir():
        return WeightsSource(path=Path(value).expanduser())
    return WeightsSource(repo=value)


def locate(value: str, setting: str) -> tuple[Path, WeightsSource]:
    """The local folder holding ``value``'s weights; ModelUnavailable naming ``setting`` when absent."""
    source = weights_source(value)
    if source.path is not None:
        if (source.path / "config.json").is_file():
            return source.path, source
        raise ModelUnavailable(
            f"{setting}={value}: no model there; it must be a transformers save_pretrained folder "
            f"(config.json, preprocessor_config.json and the weights)"
        )
    try:
        return source.locate(setting), source
    except ModelUnavailable as exc:
        raise ModelUnavailable(
            f"{setting}={value}: not in the local Hugging Face cache; run `hf download {value}` "
            f"where there is internet (with the same HF_HOME), or set {setting} to a local folder"
        ) from exc


def load(kind: Kind, value: str, *, setting: str, device: str = "auto") -> VisionModel:
    """The ``kind`` model named by ``value`` (the content of ``setting``), loaded once and
    kept, on ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    key = (kind, value, device)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(kind, value, setting, device)
        return _loaded[key]


def _load(kind: Kind, value: str, setting: str, device: str) -> VisionModel:
    folder, source = locate(value, setting)  # before importing torch: a missing model fails fast

    import transformers
    from transformers.models.auto import modeling_auto

    from gpu_runner.devices import resolve_device

    device = resolve_device(device)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError, KeyError) as exc:
        # Includes configs that need remote code: refused on purpose.
        raise ModelUnavailable(f"{setting}={value}: transformers cannot read this model without "
                               f"remote code (refused on this runner): {exc}") from exc
    auto_name = next((name for name in _AUTO_CLASSES[kind]
                      if config.model_type in getattr(modeling_auto, _MAPPINGS[name])), None)
    if auto_name is None:
        accepted = sorted({t for name in _AUTO_CLASSES[kind] for t in getattr(modeling_auto, _MAPPINGS[name])})
        raise ModelUnavailable(f"{setting}={value}: a {config.model_type!r} model is not a {kind} model "
                               f"transformers supports natively; use one of: {', '.join(accepted)}")
    try:
        model = getattr(transformers, auto_name).from_pretrained(folder, local_files_only=True)
        # The PIL backend: torchvision is not installed beside this torch build.
        processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{setting}={value}: could not load the model: {exc}") from exc
    model.to(device).eval()
    return VisionModel(kind, value, model, processor, device, source.fingerprint(folder))


def clear() -> None:
    """Forget every loaded model (tests; memory pressure)."""
    with _lock:
        _loaded.clear()
