"""Where pipelines run and in which precision: the device/dtype policy and memory options.

Policy: CUDA and MPS run in float16; the CPU runs in bfloat16 when it has native bf16
instructions (AVX512-BF16 or AMX on x86, the ``bf16`` feature on Arm), else float32, because
emulated bf16 is slower than float32. ``dtype`` overrides the policy.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
_threads_reported: set[int] = set()

DTypeChoice = Literal["auto", "float32", "bfloat16", "float16"]
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@dataclass(frozen=True)
class RuntimeOptions:
    """How the model cache places and trims pipelines. Built once from Settings."""

    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    dtype: DTypeChoice = "auto"
    attention_slicing: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False
    # Keeps only the running component on the GPU (needs accelerate and CUDA).
    cpu_offload: bool = False
    # Upper bound for all cached models together; 0 means no limit.
    memory_budget_bytes: int = 0
    # Largest output width or height a job may ask for.
    max_side: int = 1024

    @classmethod
    def from_settings(cls, settings: Any) -> RuntimeOptions:
        return cls(
            device=settings.diffusion_device,
            dtype=settings.diffusion_dtype,
            attention_slicing=settings.diffusion_attention_slicing,
            vae_tiling=settings.diffusion_vae_tiling,
            vae_slicing=settings.diffusion_vae_slicing,
            cpu_offload=settings.diffusion_cpu_offload,
            memory_budget_bytes=settings.model_cache_bytes,
            max_side=settings.diffusion_max_side,
        )


def resolve_device(choice: str = "auto") -> str:
    """The torch device name for ``choice`` (``auto``: CUDA, then MPS, then CPU)."""
    import torch

    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def describe_device(choice: str = "auto", *, use_torch: bool = True) -> tuple[str, str | None]:
    """(device, its model name) this runner computes on: ``cuda:N`` and the GPU's name, ``mps``,
    or ``cpu`` and the CPU's model name. Without torch (``use_torch=False``, or not installed):
    the CPU."""
    if use_torch:
        try:
            import torch
        except ImportError:
            pass
        else:
            device = resolve_device(choice)
            if device.startswith("cuda"):
                index = torch.device(device).index
                index = torch.cuda.current_device() if index is None else index
                return f"cuda:{index}", torch.cuda.get_device_name(index)
            if device == "mps":
                return "mps", "Apple MPS"
    return "cpu", cpu_model_name()


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "Model", "Hardware"):
            return value.strip() or None
    return platform.processor() or None


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU executes bf16 natively (read from the kernel's CPU flags)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return bool(_BF16_CPU_FLAGS & set(value.split()))
    return False


def resolve_dtype(device: str, choice: DTypeChoice = "auto") -> torch.dtype:
    """The dtype to load weights in on ``device`` (see the module docstring)."""
    import torch

    if choice != "auto":
        return getattr(torch, choice)
    if device.startswith(("cuda", "mps")):
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def torch_threads() -> dict[str, int | str | None]:
    """Torch's thread counts as seen from the calling thread (a runner's job runs in a
    Dramatiq worker thread, not the main thread), and the OpenMP/MKL variables that set them."""
    import torch

    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
            "cpus": len(os.sched_getaffinity(0)),
            **{name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}


def report_torch_threads() -> None:
    """Log :func:`torch_threads` once per thread that runs a diffusion job."""
    if threading.get_ident() not in _threads_reported:
        _threads_reported.add(threading.get_ident())
        log.info("torch threads in thread %r: %s", threading.current_thread().name, torch_threads())
