"""The bucket's layout: every key rule in one place.

What the handler and the sweep route (``inbox/<recipe>/[<ticket>/]<file>`` uploads,
``jobs/<job_id>.json`` specs, and chat turns: ``conversations/<conversation_id>/<turn>.json``
or an image uploaded to ``inbox/chat/<conversation_id>/<file>``), and what the runner, the
apps and the management commands read and write (manifests, outputs, cancel markers, runner
heartbeats, conversation manifests). Prefixes come from settings.

Tenants: every key family (inbox, jobs, outputs, manifests, cancel markers, the job index, and
any family added later) exists once per tenant under ``tenants/<tenant>/``; the untenanted
layout is the default tenant. ``Layout.for_tenant`` gives a tenant's layout; the root layout's
``parse_input`` recognises every tenant's keys and says whose they are (``InputKey.tenant``).
Only the runners' and event sources' heartbeats (``status/``) stay shared.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace
from typing import Literal

from bucketbrush.jobs import RECIPE_NAME, is_spec_job_id, is_ticket
from bucketbrush.settings import TENANT_PATTERN, Settings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# inbox/chat/<conversation_id>/<file>: an image that starts or continues a conversation (the
# upload's metadata carries the message); no recipe has this name.
CHAT_FOLDER = "chat"
TENANT_NAME = re.compile(TENANT_PATTERN)


class NotAnInput(ValueError):  # noqa: N818 - a routing verdict, not a failure
    """A key that makes no job. ``rejected``: it looked like an input but breaks a rule (a bad
    recipe folder, an unsafe key), as opposed to simply being outside the input folders."""

    def __init__(self, reason: str, *, rejected: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rejected = rejected


@dataclass(frozen=True)
class InputKey:
    """A key that makes a job, parsed."""

    kind: Literal["upload", "spec", "turn"]
    # The recipe folder of an upload; None for a spec (its recipe is inside the file).
    recipe: str | None
    # The job id the key names: a presigned upload's ticket, or a spec's file name; None for a
    # drop-folder upload (its job id comes from the content's identity) and for a spec whose
    # name is no job id (``problem`` says why; the handler records it as failed under the
    # content's derived id, so the user finds a trace).
    job_id: str | None
    problem: str | None = None
    # A chat turn: its conversation and its name (the turn file's name without .json, or the
    # uploaded file's name). A turn's job id is a presigned upload's ticket, else it comes from
    # its content's identity, like a drop.
    conversation: str | None = None
    turn: str | None = None
    # Whose key it is: a tenant's name, None for the default (untenanted) layout.
    tenant: str | None = None


def is_tenant(name: str) -> bool:
    return bool(TENANT_NAME.match(name))


def unsafe_key(key: str) -> str | None:
    """Why a key must not become a job (None when it is fine)."""
    try:
        size = len(key.encode())
    except UnicodeEncodeError:  # a lone surrogate, from a JSON "\ud800" escape
        return "not valid UTF-8"
    if not key or size > 1024:
        return "empty or over 1024 bytes"
    if _CONTROL.search(key):
        return "control characters in key"
    if key.startswith("/") or any(seg in (".", "..") for seg in key.split("/")):
        return "'.' or '..' path segment"
    return None


# Attributes of a Layout that are no key family (or one every tenant shares).
_NOT_TENANTED = frozenset({"tenant", "tenants", "root", "status"})


class Layout:
    """Key rules for one bucket's prefixes, as one tenant sees them (``settings.tenant``; None:
    the default tenant). Every string attribute set in ``__init__`` is a key family, and is
    moved under ``tenants/<tenant>/`` for a tenant unless listed in ``_NOT_TENANTED``."""

    def __init__(self, settings: Settings, *, tenant: str | None = None) -> None:
        self.tenant: str | None = None
        self.tenants = settings.tenants_prefix
        self.inbox = settings.inbox_prefix
        self.jobs = settings.jobs_prefix
        self.outputs = settings.outputs_prefix
        self.manifests = settings.manifests_prefix
        self.cancel = settings.cancel_prefix
        self.index = settings.index_prefix
        self.status = settings.status_prefix
        self.conversations = settings.conversations_prefix
        self.root = self
        if tenant := tenant or settings.tenant:
            root = copy.copy(self)
            root.root = root
            self.__dict__.update(vars(root.for_tenant(tenant)))

    # -- tenants --------------------------------------------------------------------------

    def for_tenant(self, tenant: str | None) -> Layout:
        """The layout of ``tenant`` (None: the default tenant's, the untenanted one)."""
        root = self.root
        if tenant is None:
            return root
        if not is_tenant(tenant):
            raise ValueError(f"bad tenant name {tenant!r}: lowercase letters, digits and '-', up to 32")
        scoped = copy.copy(root)
        scoped.tenant, scoped.root = tenant, root
        base = root.tenant_prefix(tenant)
        for name, value in vars(root).items():
            if name not in _NOT_TENANTED and isinstance(value, str):
                setattr(scoped, name, base + value)
        return scoped

    def tenant_prefix(self, tenant: str) -> str:
        """Everything of ``tenant``: ``tenants/<tenant>/``."""
        return f"{self.root.tenants}{tenant}/"

    @property
    def space(self) -> str:
        """The prefix of this layout's own keys ("" for the default tenant: see ``owns``)."""
        return self.tenant_prefix(self.tenant) if self.tenant else ""

    def tenant_of(self, key: str) -> str | None:
        """The tenant whose space ``key`` is in; None for the default tenant's keys."""
        tenants = self.root.tenants
        if key.startswith(tenants) and "/" in key[len(tenants):]:
            return key[len(tenants):].split("/", 1)[0]
        return None

    def owns(self, key: str) -> bool:
        """Whether ``key`` belongs to this layout's tenant (a tenant's jobs may read only these)."""
        return self.tenant_of(key) == self.tenant and not (self.tenant is None and key.startswith(self.root.tenants))

    @property
    def input_folders(self) -> dict[str, str]:
        """Name -> prefix of the folders whose new objects make jobs: where events must be routed
        (and nothing else: our own outputs and manifests must never come back) and the sweep looks."""
        return {"inbox": self.inbox, "jobs": self.jobs, "conversations": self.conversations}

    # -- inputs ---------------------------------------------------------------------------

    def parse_input(self, key: str) -> InputKey:
        """The job a key makes; raises NotAnInput when it makes none. The root layout routes
        every tenant's keys; a tenant's layout only its own."""
        if problem := unsafe_key(key):
            raise NotAnInput(problem, rejected=True)
        if self.tenant is None and key.startswith(self.tenants):
            tenant = key[len(self.tenants):].split("/", 1)[0]
            if not is_tenant(tenant) or "/" not in key[len(self.tenants):]:
                raise NotAnInput(f"bad tenant folder {tenant!r}", rejected=True)
            return replace(self.for_tenant(tenant).parse_input(key), tenant=tenant)
        return replace(self._parse_own(key), tenant=self.tenant)

    def _parse_own(self, key: str) -> InputKey:
        if key.startswith(self.inbox):
            parts = key[len(self.inbox):].split("/")
            if len(parts) < 2 or not parts[-1]:
                raise NotAnInput("not inbox/<recipe>/<file>")
            recipe = parts[0]
            if recipe == CHAT_FOLDER:
                if len(parts) < 3 or not is_spec_job_id(parts[1]):
                    raise NotAnInput(f"not inbox/{CHAT_FOLDER}/<conversation_id>/<file> (a conversation id is "
                                     "letters, digits, '_' and '-', up to 64)", rejected=True)
                # inbox/chat/<conversation_id>/<ticket>/<file>: a presigned chat upload names its job.
                ticket = parts[2] if len(parts) >= 4 and is_ticket(parts[2]) else None
                return InputKey("turn", None, ticket, conversation=parts[1], turn=parts[-1])
            if not RECIPE_NAME.match(recipe):
                raise NotAnInput(f"bad recipe folder {recipe!r}", rejected=True)
            ticket = parts[1] if len(parts) >= 3 and is_ticket(parts[1]) else None
            return InputKey("upload", recipe, ticket)
        if key.startswith(self.jobs):
            name = key[len(self.jobs):]
            if not name or name.endswith("/"):
                raise NotAnInput("a folder marker")
            if not name.endswith(".json"):
                raise NotAnInput(f"not jobs/<job_id>.json: {name!r} is no .json file")
            job_id = name.removesuffix(".json")
            if "/" in name or not is_spec_job_id(job_id):
                return InputKey("spec", None, None, problem=(
                    f"the job spec name {name!r} is not a job id: use jobs/<job_id>.json with "
                    "letters, digits, '_' and '-' (up to 64, starting with a letter or digit), no folders"))
            return InputKey("spec", None, job_id)
        if key.startswith(self.conversations):
            parts = key[len(self.conversations):].split("/")
            if len(parts) != 2 or not parts[1].endswith(".json") or parts[1] == ".json":
                raise NotAnInput("not conversations/<conversation_id>/<turn>.json")
            if not is_spec_job_id(parts[0]):
                raise NotAnInput(f"bad conversation id {parts[0]!r}: letters, digits, '_' and '-', up to 64",
                                 rejected=True)
            return InputKey("turn", None, None, conversation=parts[0], turn=parts[1].removesuffix(".json"))
        raise NotAnInput("outside inbox/, jobs/ and conversations/")

    def upload_key(self, recipe: str, ticket: str, filename: str) -> str:
        """Where a presigned upload goes: the ticket (its job id) is in the key."""
        return f"{self.inbox}{recipe}/{ticket}/{filename}"

    def turn_key(self, conversation: str, turn: str) -> str:
        """Where a chat turn's JSON goes."""
        return f"{self.conversations}{conversation}/{turn}.json"

    def turns_of(self, conversation: str) -> str:
        """The prefix of a conversation's turn files."""
        return f"{self.conversations}{conversation}/"

    def chat_upload_key(self, conversation: str, ticket: str, filename: str) -> str:
        """Where a presigned chat upload goes: the ticket (its job id) is in the key."""
        return f"{self.chat_upload_prefix(conversation)}{ticket}/{filename}"

    def chat_upload_prefix(self, conversation: str) -> str:
        """The prefix of a conversation's uploaded images (inbox/chat/<conversation_id>/)."""
        return f"{self.inbox}{CHAT_FOLDER}/{conversation}/"

    # -- conversations --------------------------------------------------------------------

    @property
    def conversation_manifests(self) -> str:
        return f"{self.manifests}conversations/"

    def conversation_manifest_key(self, conversation: str) -> str:
        return f"{self.conversation_manifests}{conversation}.json"

    def conversation_of_manifest(self, key: str) -> str | None:
        """The conversation id of ``manifests/conversations/<id>.json``; None for any other key."""
        if not key.startswith(self.conversation_manifests) or not key.endswith(".json"):
            return None
        conversation = key[len(self.conversation_manifests):-len(".json")]
        return conversation if is_spec_job_id(conversation) else None

    # -- what a job writes ----------------------------------------------------------------

    def manifest_key(self, job_id: str) -> str:
        return f"{self.manifests}{job_id}.json"

    def job_id_of_manifest(self, key: str) -> str | None:
        """The job id of ``manifests/<job_id>.json``; None for any other key."""
        if not key.startswith(self.manifests) or not key.endswith(".json"):
            return None
        job_id = key[len(self.manifests):-len(".json")]
        return job_id if job_id and "/" not in job_id else None

    def replay_key(self, replay_id: str) -> str:
        """A replay's report (bucketbrush/replay.py), beside the manifests it compares."""
        return f"{self.manifests}replays/{replay_id}.json"

    def output_key(self, job_id: str, name: str) -> str:
        return f"{self.outputs}{job_id}/{name}"

    def outputs_of(self, job_id: str) -> str:
        """The prefix under which every output of ``job_id`` lives."""
        return self.output_key(job_id, "")

    def cancel_key(self, job_id: str) -> str:
        return f"{self.cancel}{job_id}"

    # -- runner status --------------------------------------------------------------------

    @property
    def runners(self) -> str:
        """The prefix of runner heartbeats."""
        return f"{self.status}runners/"

    def heartbeat_key(self, runner_id: str) -> str:
        return f"{self.runners}{runner_id}.json"

    @property
    def sources(self) -> str:
        """The prefix of event source heartbeats."""
        return f"{self.status}sources/"

    def source_heartbeat_key(self, source_id: str) -> str:
        return f"{self.sources}{source_id}.json"

    def status_key(self, *parts: str) -> str:
        """Any other status document: ``status/<part>/<part>...``."""
        return self.status + "/".join(parts)
