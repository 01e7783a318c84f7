"""Progress for people: a tqdm bar on a terminal, plain lines otherwise (logs, pipes, CI)."""

from __future__ import annotations

import shutil
import sys
from typing import IO, Any, Self

from tqdm import tqdm

from bucketbrush.manifest import Manifest


def _screen() -> dict[str, int]:
    """The terminal's size for tqdm; 80x24 where it reports none (a pty without a window
    size says 0x0, and tqdm then draws nothing)."""
    size = shutil.get_terminal_size((80, 24))
    return {"ncols": size.columns or 80, "nrows": size.lines or 24}


class _Display:
    """A tqdm bar made on first use (``bar``), closed on exit."""

    bar: Any = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobProgress(_Display):
    """``on_progress`` for ``Job.wait``: a bar of the job's progress, its status as the label.
    Without a terminal, one line per change of status or whole ten percent."""

    def __init__(self, job_id: str, stream: IO[str] | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.job_id = job_id
        self.bar = None
        self._last: tuple[str, int] | None = None

    def __call__(self, manifest: Manifest) -> None:
        fraction = min(max(manifest.progress.fraction, 0.0), 1.0)
        if manifest.status == "succeeded":
            fraction = 1.0
        if not self.tty:
            state = (manifest.status, int(fraction * 10))
            if state != self._last:
                print(f"  {manifest.status:<9} {fraction:6.0%}", file=self.stream, flush=True)
            self._last = state
            return
        desc = f"job {self.job_id[:12]} {manifest.status:<9}"
        if self.bar is None:
            self.bar = tqdm(total=100, desc=desc, unit="%", file=self.stream, leave=True, **_screen(),
                            bar_format="{desc} |{bar}| {n:.0f}% {elapsed}")
        self.bar.set_description_str(desc, refresh=False)
        self.bar.n = round(fraction * 100)
        self.bar.refresh()


class ByteProgress(_Display):
    """``on_progress(done, total)`` for downloads: a byte bar on a terminal, else a line at
    the end of each whole quarter."""

    def __init__(self, label: str, stream: IO[str] | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.label = label
        self.bar = None
        self._quarter = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.tty:
            quarter = done * 4 // total if total else 4
            if quarter != self._quarter:
                print(f"  {self.label}: {done:,} of {total:,} bytes", file=self.stream, flush=True)
            self._quarter = quarter
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, unit="B", unit_scale=True, file=self.stream, leave=True,
                            **_screen())
        self.bar.update(done - self.bar.n)
