"""The app side: a small public API over presigned uploads and manifests.

```python
from bucketbrush.client import Studio

studio = Studio.from_settings()                      # BUCKETBRUSH_* settings, or the local stack
job = studio.submit("cat.jpg", "filter", style="noir")
manifest = job.wait(timeout=120, on_progress=lambda m: print(m.status, m.progress.fraction))
paths = job.download("out/")                         # raises the job's typed error if it failed

chat = studio.conversation()                         # a new conversation (or conversation(ID))
turn = chat.say("make it a cartoon", image="cat.jpg")   # a Turn: a Job of that conversation
turn.wait(); chat.say("upscale it 2x").download("out/")
print([t.intent for t in chat.history().turns])      # manifests/conversations/<id>.json
```

Everything goes through the same doors an app without credentials would use: a presigned POST
(``Studio.presign``) for the upload, then ``manifests/<job_id>.json``. Errors are the ones in
``bucketbrush.errors``: a failed job raises the class of its ``error.code`` (``InvalidImage``,
``InvalidParams``...), a cancelled one ``JobCancelled``, a wait that runs out ``WaitTimedOut``.
The CLI (``bucketbrush submit``, ``jobs download``, ``chat``) is built on this module; chat
turns are put by ``bucketbrush.conversations.send_turn`` (docs/conversations.md).
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3

from bucketbrush.conversations import (
    Conversation,
    Conversations,
    check_conversation_id,
    new_conversation_id,
    send_turn,
    wait_recorded,
)
from bucketbrush.errors import (
    EmptyInput,
    InputTooLarge,
    InvalidState,
    UploadRejected,
    WaitTimedOut,
    error_for_code,
)
from bucketbrush.management import cancel_job, get_job
from bucketbrush.manifest import Manifest, Output
from bucketbrush.presign import ParamsValidator, PresignedUpload, presign_upload
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket, s3_client

ProgressCallback = Callable[[Manifest], None]
# (bytes done, bytes in all) while downloading outputs.
BytesCallback = Callable[[int, int], None]


def post_upload(upload: PresignedUpload, data: bytes, filename: str, content_type: str) -> None:
    """POST ``data`` with the presigned form fields, as a browser would."""
    fields: dict[str, Any] = dict(upload.fields)
    fields["file"] = (filename, data, content_type)
    response = urllib3.request("POST", upload.url, fields=fields, timeout=60, retries=False)
    if response.status >= 300:
        raise UploadRejected(f"the store refused the upload ({response.status}): {response.data[:300]!r}")


def wait_for_manifest(bucket: Bucket, job_id: str, *, timeout: float = 600, interval: float = 0.2,
                      on_update: ProgressCallback | None = None) -> Manifest:
    """Poll ``manifests/<job_id>.json`` until its status is final; ``on_update`` sees each
    change of status or progress. Raises ``WaitTimedOut`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen: tuple[str, float] | None = None
    while True:
        manifest = bucket.read_manifest(job_id)
        if manifest is not None:
            state = (manifest.status, manifest.progress.fraction)
            if on_update and state != seen:
                on_update(manifest)
            seen = state
            if manifest.is_final:
                return manifest
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"job {job_id} not finished after {timeout:.0f}s (it goes on; wait again later)")
        time.sleep(interval)


def raise_for_status(manifest: Manifest) -> Manifest:
    """``manifest`` when it succeeded; else its typed error (``InvalidState`` when not final)."""
    if manifest.status == "succeeded":
        return manifest
    if not manifest.is_final:
        raise InvalidState(f"job {manifest.job_id} is {manifest.status}: not finished")
    if manifest.error is not None:
        raise error_for_code(manifest.error.code, f"job {manifest.job_id} {manifest.status}: {manifest.error.message}")
    raise error_for_code("cancelled" if manifest.status == "cancelled" else "job_error",
                         f"job {manifest.job_id} {manifest.status}")


class Job:
    """One job, by id. ``manifest`` is the last manifest seen (None before the first read)."""

    def __init__(self, studio: Studio, job_id: str, upload: PresignedUpload | None = None) -> None:
        self.studio = studio
        self.job_id = job_id
        self.upload = upload
        self.manifest: Manifest | None = None

    def __repr__(self) -> str:
        status = self.manifest.status if self.manifest else "?"
        return f"{type(self).__name__}({self.job_id!r}, {status})"

    def refresh(self) -> Manifest | None:
        """Read the manifest now; None while the upload's event has not been handled yet."""
        self.manifest = self.studio.bucket.read_manifest(self.job_id) or self.manifest
        return self.manifest

    def wait(self, timeout: float = 600, on_progress: ProgressCallback | None = None,
             interval: float = 0.2) -> Manifest:
        """Poll until the job is final and return its manifest, whatever the status (see
        ``outputs`` and ``raise_for_status`` for errors). ``on_progress(manifest)`` is called
        on each change of status or progress. Raises ``WaitTimedOut``."""
        self.manifest = wait_for_manifest(self.studio.bucket, self.job_id, timeout=timeout,
                                          interval=interval, on_update=on_progress)
        return self.manifest

    def raise_for_status(self) -> Manifest:
        """The final manifest if the job succeeded; else the typed error of its ``error.code``."""
        manifest = self.refresh()
        if manifest is None:
            raise InvalidState(f"job {self.job_id} has no manifest yet")
        return raise_for_status(manifest)

    def outputs(self) -> list[Output]:
        """The outputs of a succeeded job (keys, sizes, hashes); ``url(output)`` presigns one."""
        return self.raise_for_status().outputs

    def url(self, output: Output, expires_s: int | None = None) -> str:
        """A presigned GET for one output."""
        return self.studio.bucket.presigned_get(output.key, expires_s)

    def download(self, dest: str | Path, on_progress: BytesCallback | None = None) -> list[Path]:
        """Download the outputs into ``dest`` (created); ``on_progress(done, total)`` in bytes."""
        outputs = self.outputs()
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        total, done, paths = sum(o.bytes for o in outputs), 0, []
        bucket = self.studio.bucket

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if on_progress:
                on_progress(done, total)

        for out in outputs:
            path = dest / out.key.rsplit("/", 1)[-1]
            bucket.s3.download_file(bucket.name, out.key, str(path), Callback=advance)
            paths.append(path)
        return paths

    def cancel(self) -> Manifest:
        """Ask the runner to stop the job (an empty object at ``cancel/<job_id>``); it ends
        ``cancelled``. Raises ``InvalidState`` when it is already final."""
        self.manifest = cancel_job(self.studio.bucket, self.job_id)
        return self.manifest


class Turn(Job):
    """One turn of a conversation: a Job (wait, outputs, download, cancel) whose ``wait`` returns
    once the conversation's manifest lists the turn too, so ``chat.history()`` has it. ``key`` is
    the object the turn was put as; ``conversation`` the manifest as of this turn (after wait)."""

    def __init__(self, chat: Chat, job_id: str, key: str) -> None:
        super().__init__(chat.studio, job_id)
        self.chat = chat
        self.key = key
        self.conversation: Conversation | None = None

    def wait(self, timeout: float = 600, on_progress: ProgressCallback | None = None,
             interval: float = 0.2) -> Manifest:
        """As ``Job.wait``, then until the conversation records the turn (the runner writes it
        right after the job's final manifest; a turn refused before it ran has no record)."""
        manifest = super().wait(timeout, on_progress, interval)
        if manifest.turn is not None:
            self.conversation = wait_recorded(self.studio.bucket, manifest, timeout=min(timeout, 30))
        return manifest


class Chat:
    """A conversation (docs/conversations.md): each ``say`` is a turn, run in order on the
    picture the turns before left; ``history()`` is its manifest."""

    def __init__(self, studio: Studio, conversation_id: str) -> None:
        self.studio = studio
        self.conversation_id = check_conversation_id(conversation_id)

    def __repr__(self) -> str:
        return f"Chat({self.conversation_id!r})"

    def say(self, message: str = "", image: str | Path | bytes | None = None, params: dict[str, Any] | None = None,
            *, recipe: str | None = None, filename: str | None = None) -> Turn:
        """Send one turn; returns at once (``turn.wait()`` follows it). ``image`` (a path or
        bytes, ``filename`` naming bytes) becomes the conversation's picture before the message
        applies; ``params`` override what the message's intent chose (e.g. a ``mask_key``);
        ``recipe`` names the recipe outright (no refinement; ``params`` are its params)."""
        picture = Path(image) if isinstance(image, str) else image
        sent = send_turn(self.studio.bucket, message, conversation=self.conversation_id, image=picture,
                         filename=filename, params=params, recipe=recipe)
        return Turn(self, sent.job_id, sent.key)

    def history(self) -> Conversation:
        """``manifests/conversations/<id>.json``: every finished turn in order and the current
        ``image``; empty (no turns) before the first turn finished."""
        found, _ = Conversations(self.studio.bucket, None).read(self.conversation_id)
        return found or Conversation(conversation_id=self.conversation_id)

    @property
    def image(self) -> str | None:
        """The key of the conversation's current picture (what the next turn works on)."""
        return self.history().image


class Studio:
    """A bucketbrush deployment as an app sees it: submit images, watch jobs, fetch outputs."""

    def __init__(self, settings: Settings, bucket: Bucket | None = None, *,
                 validate: ParamsValidator | None = None) -> None:
        self.settings = settings
        self.bucket = bucket or Bucket(settings)
        # Checks recipe and params before an upload is presigned (the CLI passes the runner's).
        self.validate = validate

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, validate: ParamsValidator | None = None) -> Studio:
        """From ``BUCKETBRUSH_*`` variables, ``.env`` and a running local stack's state file."""
        return cls(settings or Settings(), validate=validate)

    def presign(self, recipe: str, filename: str = "upload.png", content_type: str | None = None,
                params: dict[str, Any] | None = None, *, expires_s: int | None = None,
                webhook: str | None = None, webhook_events: list[str] | None = None) -> PresignedUpload:
        """A presigned POST for one upload (``url``, ``fields``, ``job_id``, ``manifest_url``...),
        signed for the public endpoint, to hand to a browser or another app; ``webhook`` is the
        job's own signed webhook target (see the README's *Subscribers*)."""
        return presign_upload(s3_client(self.settings, public=True), self.settings, recipe=recipe,
                              filename=filename, content_type=content_type, params=params, expires_s=expires_s,
                              webhook=webhook, webhook_events=webhook_events, validate=self.validate)

    def submit(self, source: str | Path | bytes, recipe: str, *, filename: str | None = None,
               content_type: str | None = None, webhook: str | None = None, **params: Any) -> Job:
        """Upload a file (a path) or ``bytes`` as a job of ``recipe`` with ``params``; returns
        at once (``job.wait()`` follows it). Size is checked before anything is presigned."""
        if isinstance(source, bytes):
            data, name = source, filename or "upload.png"
        else:
            path = Path(source)
            size = path.stat().st_size  # FileNotFoundError before anything is presigned
            if path.is_dir():
                raise IsADirectoryError(21, "is a directory", str(path))
            self._check_size(size, str(path))
            data, name = path.read_bytes(), filename or path.name
        self._check_size(len(data), name)
        content_type = content_type or mimetypes.guess_type(name)[0] or "image/png"
        upload = self.presign(recipe, filename=name, content_type=content_type, params=params, webhook=webhook)
        post_upload(upload, data, name, content_type)
        return Job(self, upload.job_id, upload)

    def conversation(self, conversation_id: str | None = None) -> Chat:
        """A conversation to ``say`` turns in: ``conversation_id`` continues one, None starts a
        new one. Raises ``InvalidParams`` for a bad id."""
        return Chat(self, conversation_id or new_conversation_id())

    def chat(self, message: str = "", image: str | Path | bytes | None = None,
             params: dict[str, Any] | None = None, *, conversation: str | None = None, **kwargs: Any) -> Turn:
        """One turn (``Chat.say``) in ``conversation``, a new one when None: ``turn.chat`` continues it."""
        return self.conversation(conversation).say(message, image, params, **kwargs)

    def job(self, job_id: str) -> Job:
        """An existing job; raises ``JobNotFound`` when it has no manifest."""
        job = Job(self, job_id)
        job.manifest = get_job(self.bucket, job_id)
        return job

    def _check_size(self, size: int, name: str) -> None:
        if size == 0:
            raise EmptyInput(f"{name} is empty (0 bytes)")
        if size > self.settings.max_upload_bytes:
            raise InputTooLarge(f"{name} is {size} bytes; uploads are limited to {self.settings.max_upload_bytes}")


def submit_file(settings: Settings, path: Path, recipe: str, params: dict[str, Any], *,
                wait: bool = True, timeout: float = 600,
                on_update: ProgressCallback | None = None,
                validate: ParamsValidator | None = None) -> tuple[PresignedUpload, Manifest | None]:
    """Upload ``path`` and (with ``wait``) return its final manifest: ``Studio.submit`` + ``Job.wait``.
    ``validate`` checks the recipe and params before anything is uploaded."""
    job = Studio(settings, validate=validate).submit(path, recipe, **params)
    assert job.upload is not None
    return job.upload, job.wait(timeout, on_progress=on_update) if wait else None
