"""The model cache: load each base pipeline once, derive task pipelines from it.

``from_pretrained`` runs once per model; img2img, inpaint and ControlNet pipelines are built
with ``from_pipe``, which shares the already loaded UNet, VAE and text encoders (no copy).
Models are evicted least-recently-used when a new one would exceed the memory budget.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bucketbrush.errors import OutOfMemory
from gpu_runner.devices import RuntimeOptions, resolve_device, resolve_dtype
from gpu_runner.models import ModelRegistry, ModelSpec, RemoteSpec

log = logging.getLogger(__name__)

Task = Literal["txt2img", "img2img", "inpaint"]

# name -> (diffusers scheduler class, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler ``name`` built from the model's own scheduler config."""
    import diffusers

    class_name, extra = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **extra)


@dataclass
class LoadedModel:
    """One base pipeline in memory, with what was derived from it."""

    spec: ModelSpec
    pipe: Any
    device: str
    dtype: Any
    fingerprint: str
    revision: str | None
    nbytes: int
    scheduler_config: Any
    controlnets: dict[str, Any] = field(default_factory=dict)
    derived: dict[tuple[str, str | None], Any] = field(default_factory=dict)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


class ModelCache:
    """Loaded pipelines keyed by model id. One per runner process; not for parallel jobs."""

    def __init__(self, registry: ModelRegistry, options: RuntimeOptions | None = None) -> None:
        self.registry = registry
        self.options = options or RuntimeOptions()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Any) -> ModelCache:
        return cls(ModelRegistry.from_toml(settings.models_file), RuntimeOptions.from_settings(settings))

    @property
    def loaded(self) -> list[str]:
        return list(self._models)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def preload(self, model_ids: Iterable[str]) -> None:
        """Load base pipelines now (at worker start), so the first job does not wait. Remote
        models (a provider's) have nothing to load."""
        for model_id in model_ids:
            if not isinstance(self.registry.get_any(model_id), RemoteSpec):
                self.model(model_id)

    def model(self, model_id: str) -> LoadedModel:
        """The loaded base model ``model_id``, loading it (and evicting others) if needed."""
        spec = self.registry.get_model(model_id)
        with self._lock, self.guard():
            if spec.id in self._models:
                self._models.move_to_end(spec.id)
                return self._models[spec.id]
            folder = spec.weights.locate(f"model {spec.id!r}")
            self._make_room(_disk_bytes(folder), keep=None)
            loaded = self._load(spec, folder)
            self._models[spec.id] = loaded
            self._make_room(0, keep=spec.id)
            return loaded

    def pipeline(self, model_id: str, task: Task, control: str | None = None) -> tuple[Any, LoadedModel]:
        """The pipeline for ``task`` (with the ``control`` ControlNet, if given) on ``model_id``."""
        loaded = self.model(model_id)
        key = (task, control)
        with self._lock, self.guard():
            if key not in loaded.derived:
                loaded.derived[key] = self._derive(loaded, task, control)
            return loaded.derived[key], loaded

    def evict(self, model_id: str) -> None:
        with self._lock:
            if self._models.pop(model_id, None) is not None:
                log.info("evicted model %s", model_id)
                _free_memory()

    def clear(self) -> None:
        """Drop every loaded model (after an out-of-memory error, or on shutdown)."""
        with self._lock:
            self._models.clear()
            _free_memory()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn an out-of-memory error into OutOfMemory after freeing the whole cache, so the
        next job starts from a clean device instead of a fragmented one."""
        try:
            yield
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            self.clear()
            raise OutOfMemory(
                f"out of memory on {resolve_device(self.options.device)}; the model cache was "
                f"freed. Try a smaller size or fewer images, or enable cpu_offload / vae_tiling"
            ) from exc

    # -- loading --------------------------------------------------------------------------

    def _load(self, spec: ModelSpec, folder: Path) -> LoadedModel:
        from diffusers import AutoPipelineForText2Image

        device = resolve_device(self.options.device)
        dtype = resolve_dtype(device, self.options.dtype)
        log.info("loading model %s (%s) from %s as %s on %s", spec.id, spec.family, folder, dtype, device)
        kwargs: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": True}
        if spec.weights.variant:
            kwargs["variant"] = spec.weights.variant
        pipe = AutoPipelineForText2Image.from_pretrained(folder, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        if self.options.attention_slicing:
            pipe.enable_attention_slicing()
        if self.options.vae_tiling:
            pipe.vae.enable_tiling()
        if self.options.vae_slicing:
            pipe.vae.enable_slicing()
        self._place(pipe, device)
        return LoadedModel(
            spec=spec, pipe=pipe, device=device, dtype=dtype,
            fingerprint=spec.weights.fingerprint(folder),
            revision=folder.name if spec.weights.repo else None,
            nbytes=_module_bytes(pipe.components.values()),
            scheduler_config=pipe.scheduler.config,
        )

    def _derive(self, loaded: LoadedModel, task: Task, control: str | None) -> Any:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

        auto = {"txt2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
                "inpaint": AutoPipelineForInpainting}[task]
        if control is None:
            if task == "txt2img":
                return loaded.pipe
            pipe = auto.from_pipe(loaded.pipe)
        else:
            pipe = auto.from_pipe(loaded.pipe, controlnet=self._controlnet(loaded, control))
        pipe.set_progress_bar_config(disable=True)
        self._place(pipe, loaded.device)
        return pipe

    def _controlnet(self, loaded: LoadedModel, kind: str) -> Any:
        if kind not in loaded.controlnets:
            from diffusers import ControlNetModel

            source = loaded.spec.controlnet(kind)
            folder = source.locate(f"model {loaded.spec.id!r} controlnet {kind}")
            self._make_room(_disk_bytes(folder), keep=loaded.spec.id)
            kwargs: dict[str, Any] = {"torch_dtype": loaded.dtype, "local_files_only": True}
            if source.variant:
                kwargs["variant"] = source.variant
            controlnet = ControlNetModel.from_pretrained(folder, **kwargs)
            if not self.options.cpu_offload:
                controlnet.to(loaded.device)
            loaded.controlnets[kind] = controlnet
            loaded.nbytes += _module_bytes([controlnet])
        return loaded.controlnets[kind]

    def _place(self, pipe: Any, device: str) -> None:
        if self.options.cpu_offload and device.startswith("cuda"):
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)

    def _make_room(self, incoming: int, *, keep: str | None) -> None:
        """Evict least-recently-used models until ``incoming`` more bytes fit the budget."""
        budget = self.options.memory_budget_bytes
        if not budget:
            return
        while self.nbytes + incoming > budget:
            victim = next((m for m in self._models if m != keep), None)
            if victim is None:
                if incoming:
                    log.warning("model needs ~%d MB, over the %d MB budget even alone",
                                (self.nbytes + incoming) >> 20, budget >> 20)
                return
            self.evict(victim)


def _module_bytes(components: Iterable[Any]) -> int:
    import torch

    total = 0
    for module in components:
        if isinstance(module, torch.nn.Module):
            for tensor in (*module.parameters(), *module.buffers()):
                total += tensor.numel() * tensor.element_size()
    return total


def _disk_bytes(folder: Path) -> int:
    """Rough in-memory size before loading: weight files on disk (safetensors preferred)."""
    total = 0
    for sub in [folder, *(p for p in folder.iterdir() if p.is_dir())]:
        files = list(sub.glob("*.safetensors")) or list(sub.glob("*.bin"))
        total += sum(f.stat().st_size for f in files)
    return total


def _free_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # CPU and MPS allocators raise plain RuntimeErrors.
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )
