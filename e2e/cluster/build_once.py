"""A cached build directory made once, across processes.

Two test lanes asked for helm at the same moment on a fresh machine: one removed the other's
half-built directory, and the other failed writing its completion mark (FileNotFoundError).
One builder at a time now (a file lock beside the directory); the others wait and use its
result. A build that fails leaves the finished directory as it was.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable
from pathlib import Path

DONE = ".complete"  # written last in a finished directory


def is_built(target: Path, *files: str) -> bool:
    return (target / DONE).exists() and all((target / name).exists() for name in files)


def build_once(target: Path, build: Callable[[Path], None], stamp: str, *files: str) -> Path:
    """`target`, made by `build(partial_directory)` unless it is already there with `files`."""
    if is_built(target, *files):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(target, *files):  # built while this process waited
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        build(partial)
        (partial / DONE).write_text(stamp + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target
