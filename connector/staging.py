"""Data stage-in before submission and stage-out after the end (the paper's future work).

Pairs are `podPath:hpcPath` in both directions (`src` is the pod path, `dst` the HPC path).
Stage-in copies the pod path (file or directory) to the HPC side; stage-out copies the HPC
path back into the pod path. A relative HPC path is inside the job directory. Both work on a
backend's `FileStore` (capability FILES), never on a transport, and every transport streams a
file in bounded chunks: a file's size never becomes the connector's memory.

Stage-out runs after the job ended, so it must end too: a link fault is retried a bounded
number of times, a file that cannot be copied (a dangling symlink, no permission) is named in
a `StagingError` once everything else is copied, and a name from a remote listing that could
leave the declared directory (`..`, a slash, a symlink loop) is refused, never followed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

from connector.backends.base import FileStore
from connector.errors import ConnectorError, SpecError, TransientError
from connector.spec import StagePair

log = logging.getLogger("hpc-connector")
T = TypeVar("T")

ATTEMPTS = 5  # per stage-out operation, for a link fault; waits 1, 2, 4, 8 s in between
MAX_DEPTH = 32  # directory levels a stage-out descends (a symlink loop ends here)
_SHOWN = 5  # failed files named in the error


class StagingError(ConnectorError):
    """Files could not be copied; the message names them."""

    exit_code = 74  # EX_IOERR
    reason = "StagingFailed"


def _remote(path: str, job_dir: str) -> str:
    return path if path.startswith("/") else posixpath.join(job_dir, path)


# --- stage-in ---------------------------------------------------------------------------------

def stage_in(files: FileStore, pairs: Iterable[StagePair], job_dir: str) -> None:
    for pair in pairs:
        target = _remote(pair.dst, job_dir)
        if os.path.isdir(pair.src):
            count = _upload_tree(files, pair.src, target)
        elif os.path.isfile(pair.src):
            files.mkdir(posixpath.dirname(target))
            _upload(files, pair.src, target)
            count = 1
        else:
            raise SpecError(f"stage-in: {pair.src} does not exist in the pod (is it mounted?)")
        log.info("staged in %s -> %s (%d file%s)", pair.src, target, count, "" if count == 1 else "s")


def _upload(files: FileStore, local: str, remote: str) -> None:
    try:
        files.upload(local, remote)
    except OSError as exc:  # unreadable here, or refused there: a retry cannot help
        raise StagingError(f"stage-in: cannot copy {local} to {remote}: {_why(exc)}") from None


def _upload_tree(files: FileStore, local_dir: str, remote_dir: str) -> int:
    count = 0
    for root, _dirs, names in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        remote_root = remote_dir if rel == "." else posixpath.join(remote_dir, *rel.split(os.sep))
        files.mkdir(remote_root)
        for name in sorted(names):
            _upload(files, os.path.join(root, name), posixpath.join(remote_root, name))
            count += 1
    return count


# --- stage-out --------------------------------------------------------------------------------

def stage_out(files: FileStore, pairs: Iterable[StagePair], job_dir: str,
              pause: Callable[[float], None] = time.sleep) -> None:
    """Copy every pair back; raise StagingError naming what could not be copied."""
    copier = _StageOut(files, pause)
    for pair in pairs:
        source = _remote(pair.dst, job_dir)
        before = copier.copied
        kind = copier.attempt(lambda: _kind(files, source), source)  # noqa: B023 - called at once
        if kind == "dir":
            copier.tree(source, pair.src, 0)
        elif kind == "file":
            parent = os.path.dirname(pair.src) or "."
            os.makedirs(parent, exist_ok=True)
            copier.file(source, pair.src)
        else:
            log.warning("stage-out: %s does not exist on the HPC side; skipped", source)
            continue
        count = copier.copied - before
        log.info("staged out %s -> %s (%d file%s)", source, pair.src, count, "" if count == 1 else "s")
    if copier.failed:
        shown = "; ".join(copier.failed[:_SHOWN])
        more = f" (and {len(copier.failed) - _SHOWN} more)" if len(copier.failed) > _SHOWN else ""
        raise StagingError(f"stage-out: {len(copier.failed)} file(s) could not be copied: {shown}{more}")


def _kind(files: FileStore, path: str) -> str | None:
    if files.is_dir(path):
        return "dir"
    return "file" if files.exists(path) else None


class _StageOut:
    """One stage-out: what was copied, what failed, and the bounded retries."""

    def __init__(self, files: FileStore, pause: Callable[[float], None]) -> None:
        self.files = files
        self.pause = pause
        self.copied = 0
        self.failed: list[str] = []

    def attempt(self, action: Callable[[], T], what: str) -> T:
        """`action`, again after a link fault, ATTEMPTS times at most; then a StagingError (the
        life cycle would retry a TransientError for ever, and the pod would never end)."""
        delay = 1.0
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return action()
            except TransientError as exc:
                if attempt == ATTEMPTS:
                    raise StagingError(f"stage-out: {what}: {exc.message} "
                                       f"(gave up after {ATTEMPTS} attempts)") from None
                log.warning("stage-out: %s: %s; retrying in %.0fs", what, exc.message, delay)
                self.pause(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def file(self, remote: str, local: str) -> None:
        """Into a temporary name beside the target, renamed when complete: a failed copy leaves
        no partial file, and a symlink already at the target is replaced, not written through."""
        directory, name = os.path.split(local)
        partial = os.path.join(directory, f".{name[:200]}.{uuid.uuid4().hex[:8]}.part")
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            self.attempt(lambda: self.files.download(remote, partial), remote)
            os.replace(partial, local)
            self.copied += 1
        except OSError as exc:
            self.failed.append(f"{remote}: {_why(exc)}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)

    def tree(self, remote_dir: str, local_dir: str, depth: int) -> None:
        if depth >= MAX_DEPTH:
            self.failed.append(f"{remote_dir}: more than {MAX_DEPTH} directory levels (a symlink loop?)")
            return
        if os.path.islink(local_dir):
            self.failed.append(f"{remote_dir}: {local_dir} in the pod is a symlink (not followed)")
            return
        try:
            os.makedirs(local_dir, exist_ok=True)
            names = self.attempt(lambda: self.files.listdir(remote_dir), remote_dir)
        except OSError as exc:
            self.failed.append(f"{remote_dir}: {_why(exc)}")
            return
        for name in names:
            if not _plain_name(name):
                self.failed.append(f"{remote_dir}: entry {name!r} is not a plain file name (refused)")
                continue
            remote = posixpath.join(remote_dir, name)
            local = os.path.join(local_dir, name)
            try:
                is_dir = self.attempt(lambda: self.files.is_dir(remote), remote)  # noqa: B023
            except OSError as exc:
                self.failed.append(f"{remote}: {_why(exc)}")
                continue
            if is_dir:
                self.tree(remote, local, depth + 1)
            else:
                self.file(remote, local)


def _plain_name(name: str) -> bool:
    """One entry of one directory: joined to it, it stays inside it."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
