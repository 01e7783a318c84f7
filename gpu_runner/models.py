"""The model registry: which diffusion models this runner offers, read from a TOML file.

Example ``models.toml``::

    default = "sd15"

    [models.sd15]
    family = "sd15"                                      # sd15 | sd21 | sdxl
    repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # from the local HF cache only
    # path = "/models/sd15"                              # or a local diffusers folder
    scheduler = "euler_a"
    width = 512
    height = 512

    [models.sd15.controlnets]
    canny = "lllyasviel/control_v11p_sd15_canny"         # repo id ...
    scribble = "./controlnets/sd15-scribble"             # ... or a path ("/", "./", "~")
    openpose = { repo = "lllyasviel/control_v11p_sd15_openpose", revision = "main" }

Relative paths are relative to the TOML file. Weights are never downloaded by the runner:
a ``repo`` must already be in the Hugging Face cache (``hf download REPO`` on a connected
machine, or a copied ``HF_HOME``), and loading works with ``HF_HUB_OFFLINE=1``.

A model may be served by a remote provider instead (``txt2img`` only; gpu_runner/providers.py)::

    [models.sdxl-hf]
    provider = "hf-inference"                            # hf-inference | openai-images | replicate
    remote_model = "stabilityai/stable-diffusion-xl-base-1.0"
    width = 1024
    height = 1024

and a local model may fall back to one when its weights are missing or the device runs out of
memory: ``fallback = "hf-inference:stabilityai/stable-diffusion-xl-base-1.0"`` (provider, a
colon, the provider's model id).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bucketbrush.errors import ConfigError, InvalidParams, ModelUnavailable, UnknownModel

Family = Literal["sd15", "sd21", "sdxl"]
ControlKind = Literal["canny", "openpose", "scribble"]
SchedulerName = Literal["euler_a", "euler", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "lcm"]
Provider = Literal["hf-inference", "openai-images", "replicate"]

DEFAULT_SIDE: Mapping[str, int] = MappingProxyType({"sd15": 512, "sd21": 768, "sdxl": 1024})


class WeightsSource(BaseModel):
    """A local folder, or a repo id resolved in the local HF cache (never downloaded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path | None = None
    repo: str | None = None
    revision: str | None = None
    variant: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> WeightsSource:
        if (self.path is None) == (self.repo is None):
            raise ValueError("give exactly one of path or repo")
        return self

    def describe(self) -> str:
        if self.path is not None:
            return f"path {self.path}"
        return f"repo {self.repo}" + (f"@{self.revision}" if self.revision else "")

    def locate(self, what: str) -> Path:
        """The local folder holding the weights; ModelUnavailable (naming what to configure)
        when they are not on this machine."""
        if self.path is not None:
            if self.path.is_dir() and any(self.path.glob("*.json")):
                return self.path
            raise ModelUnavailable(
                f"{what}: no weights at {self.path}; put a diffusers folder there "
                f"(save_pretrained layout) or change its path in the models file"
            )
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
        except ImportError as exc:
            raise ModelUnavailable(f"{what}: huggingface_hub is not installed (pip install "
                                   f"'bucketbrush[diffusion]')") from exc
        try:
            return Path(snapshot_download(self.repo, revision=self.revision, local_files_only=True))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"{what}: {self.repo} is not in the local Hugging Face cache; run "
                f"`hf download {self.repo}` where there is internet (with the same HF_HOME), "
                f"or set path = \"/local/folder\" instead of repo"
            ) from exc

    def fingerprint(self, folder: Path) -> str:
        """A cheap identity for the weights: the snapshot commit for a repo, else a hash of
        the folder's file names, sizes and mtimes (not of the multi-GB contents)."""
        if self.repo is not None and folder.parent.name == "snapshots":
            return folder.name
        digest = hashlib.sha256()
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return "files:" + digest.hexdigest()[:16]


class RemoteSpec(BaseModel):
    """A model a remote provider serves: no local weights (gpu_runner/providers.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    provider: Provider
    remote_model: str = Field(min_length=1, description="the provider's model id (replicate: owner/name[:version])")
    width: int = Field(default=1024, ge=64, multiple_of=8)
    height: int = Field(default=1024, ge=64, multiple_of=8)
    description: str = ""

    @classmethod
    def fallback_for(cls, local_id: str, value: str, width: int, height: int) -> RemoteSpec:
        """``fallback = "<provider>:<remote model id>"`` of the local model ``local_id``."""
        provider, sep, remote = value.partition(":")
        if not sep or not remote:
            raise ValueError(f'fallback must be "<provider>:<remote model id>", got {value!r}')
        return cls(id=f"{local_id}@{provider}", provider=provider, remote_model=remote,  # type: ignore[arg-type]
                   width=width, height=height)


class ModelSpec(BaseModel):
    """One entry of the models file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    family: Family
    weights: WeightsSource
    controlnets: Mapping[ControlKind, WeightsSource] = Field(default_factory=dict)
    scheduler: SchedulerName = "euler_a"
    width: int = Field(default=512, ge=64, multiple_of=8)
    height: int = Field(default=512, ge=64, multiple_of=8)
    description: str = ""
    # The weights' license (an SPDX id or a URL), recorded in each output's Content Credentials.
    license: str | None = None
    # Where txt2img runs when the weights are missing or the device is out of memory.
    fallback: RemoteSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("family") in DEFAULT_SIDE:
            side = DEFAULT_SIDE[data["family"]]
            data = {"width": side, "height": side, **data}
        return data

    def controlnet(self, kind: str) -> WeightsSource:
        try:
            return self.controlnets[kind]  # type: ignore[index]
        except KeyError:
            raise ModelUnavailable(
                f"model {self.id!r} has no {kind} ControlNet; add {kind} = \"path-or-repo\" "
                f"under [models.{self.id}.controlnets] in the models file"
            ) from None


@dataclass(frozen=True)
class ComponentReport:
    name: str
    source: str
    present: bool
    hint: str = ""


@dataclass(frozen=True)
class ModelReport:
    id: str
    family: str
    components: list[ComponentReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.present for c in self.components)


class ModelRegistry(Mapping[str, "ModelSpec | RemoteSpec"]):
    """A read-only mapping from model id to spec, in file order."""

    def __init__(self, models: Mapping[str, ModelSpec | RemoteSpec], default: str | None = None) -> None:
        self._models = MappingProxyType(dict(models))
        if default is not None and default not in self._models:
            raise ConfigError(f"default model {default!r} is not defined; defined: {self._ids()}")
        self.default = default or next(iter(self._models), None)

    @classmethod
    def from_toml(cls, path: Path | str) -> ModelRegistry:
        path = Path(path).expanduser()
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the models file {path}: {exc}") from exc
        base = path.parent
        models = {}
        for model_id, entry in (doc.get("models") or {}).items():
            try:
                models[model_id] = _parse_entry(model_id, dict(entry), base)
            except (ValidationError, TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: [models.{model_id}]: {exc}") from exc
        return cls(models, doc.get("default"))

    def __getitem__(self, model_id: str) -> ModelSpec | RemoteSpec:
        return self._models[model_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def _ids(self) -> str:
        return ", ".join(self._models) or "(none)"

    def get_model(self, model_id: str | None) -> ModelSpec:
        """The local model ``model_id`` (None: the default); UnknownModel lists the valid ids,
        InvalidParams says when the id names a remote model (only txt2img runs those)."""
        spec = self.get_any(model_id)
        if isinstance(spec, RemoteSpec):
            raise InvalidParams(f"model {spec.id!r} is served remotely ({spec.provider}); only txt2img runs "
                                f"remote models: choose a local one")
        return spec

    def get_any(self, model_id: str | None) -> ModelSpec | RemoteSpec:
        """The spec for ``model_id``, local or remote (None: the default)."""
        if model_id is None:
            if self.default is None:
                raise ModelUnavailable("no models are configured; add one to the models file")
            model_id = self.default
        try:
            return self._models[model_id]
        except KeyError:
            raise UnknownModel(f"unknown model {model_id!r}; available: {self._ids()}") from None

    def doctor(self) -> list[ModelReport]:
        """Per model: which weights are present on this machine, and how to supply the rest."""
        reports = []
        for spec in self._models.values():
            if isinstance(spec, RemoteSpec):
                reports.append(ModelReport(spec.id, spec.provider, [
                    ComponentReport("remote", f"{spec.provider} {spec.remote_model}", True)]))
                continue
            parts = [("weights", spec.weights)] + [(f"controlnet {k}", s) for k, s in spec.controlnets.items()]
            components = []
            for name, source in parts:
                try:
                    source.locate(f"{spec.id} {name}")
                    components.append(ComponentReport(name, source.describe(), True))
                except ModelUnavailable as exc:
                    components.append(ComponentReport(name, source.describe(), False, exc.message))
            reports.append(ModelReport(spec.id, spec.family, components))
        return reports


def _source(value: Any, base: Path) -> WeightsSource:
    """A ``path``/``repo`` table, or the string shorthand: a path when it starts with
    ``/``, ``.`` or ``~``, else a repo id."""
    if isinstance(value, str):
        value = {"path": value} if value.startswith(("/", ".", "~")) else {"repo": value}
    source = WeightsSource.model_validate(value)
    if source.path is not None:
        path = source.path.expanduser()
        source = source.model_copy(update={"path": path if path.is_absolute() else base / path})
    return source


def _parse_entry(model_id: str, entry: dict[str, Any], base: Path) -> ModelSpec | RemoteSpec:
    if "provider" in entry:
        return RemoteSpec.model_validate({"id": model_id, **entry})
    fallback = entry.pop("fallback", None)
    weights = {k: entry.pop(k) for k in ("path", "repo", "revision", "variant") if k in entry}
    controlnets = {kind: _source(v, base) for kind, v in (entry.pop("controlnets", None) or {}).items()}
    spec = ModelSpec.model_validate(
        {"id": model_id, "weights": _source(weights, base), "controlnets": controlnets, **entry}
    )
    if fallback is None:
        return spec
    if not isinstance(fallback, str):
        raise ValueError('fallback must be "<provider>:<remote model id>"')
    remote = RemoteSpec.fallback_for(model_id, fallback, spec.width, spec.height)
    return spec.model_copy(update={"fallback": remote})
