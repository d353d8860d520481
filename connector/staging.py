"""Data stage-in before submission and stage-out after the end (the paper's future work).

Pairs are `podPath:hpcPath` in both directions (`src` is the pod path, `dst` the HPC path).
Stage-in copies the pod path (file or directory) to the HPC side; stage-out copies the HPC
path back into the pod path. A relative HPC path is inside the job directory. Both work on a
backend's `FileStore` (capability FILES), never on a transport.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable

from connector.backends.base import FileStore
from connector.errors import SpecError
from connector.spec import StagePair

log = logging.getLogger("hpc-connector")


def _remote(path: str, job_dir: str) -> str:
    return path if path.startswith("/") else posixpath.join(job_dir, path)


def stage_in(files: FileStore, pairs: Iterable[StagePair], job_dir: str) -> None:
    for pair in pairs:
        target = _remote(pair.dst, job_dir)
        if os.path.isdir(pair.src):
            count = _upload_tree(files, pair.src, target)
        elif os.path.isfile(pair.src):
            files.mkdir(posixpath.dirname(target))
            files.upload(pair.src, target)
            count = 1
        else:
            raise SpecError(f"stage-in: {pair.src} does not exist in the pod (is it mounted?)")
        log.info("staged in %s -> %s (%d file%s)", pair.src, target, count, "" if count == 1 else "s")


def _upload_tree(files: FileStore, local_dir: str, remote_dir: str) -> int:
    count = 0
    for root, _dirs, names in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        remote_root = remote_dir if rel == "." else posixpath.join(remote_dir, *rel.split(os.sep))
        files.mkdir(remote_root)
        for name in sorted(names):
            files.upload(os.path.join(root, name), posixpath.join(remote_root, name))
            count += 1
    return count


def stage_out(files: FileStore, pairs: Iterable[StagePair], job_dir: str) -> None:
    for pair in pairs:
        source = _remote(pair.dst, job_dir)
        if files.is_dir(source):
            count = _download_tree(files, source, pair.src)
        elif files.exists(source):
            os.makedirs(os.path.dirname(pair.src) or ".", exist_ok=True)
            files.download(source, pair.src)
            count = 1
        else:
            log.warning("stage-out: %s does not exist on the HPC side; skipped", source)
            continue
        log.info("staged out %s -> %s (%d file%s)", source, pair.src, count, "" if count == 1 else "s")


def _download_tree(files: FileStore, remote_dir: str, local_dir: str) -> int:
    os.makedirs(local_dir, exist_ok=True)
    count = 0
    for name in files.listdir(remote_dir):
        remote = posixpath.join(remote_dir, name)
        local = os.path.join(local_dir, name)
        if files.is_dir(remote):
            count += _download_tree(files, remote, local)
        else:
            files.download(remote, local)
            count += 1
    return count
