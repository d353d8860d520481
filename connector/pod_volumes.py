"""A whole pod's ConfigMap, Secret, downwardAPI and projected volumes, copied to the HPC side.

The kubelet fills them in the leader connector's container (the webhook mounts each at
VOLUMES_DIR/<name>, read-only, with the volume's own `items`), so what is copied is exactly
what the pod's containers would have seen. The leader copies them into the job directory
before it submits: every file 0600, every directory 0700, the kubelet's `..data` bookkeeping
left out. The job binds them read-only and removes them when it ends (connector/pod_render.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from connector.backends.base import FileStore
from connector.errors import SpecError
from connector.render import JobPaths
from connector.spec import VOLUMES_DIR, JobSpec

log = logging.getLogger("hpc-connector")

MAX_VOLUME_BYTES = 32 * 1024 * 1024  # ConfigMaps and Secrets hold at most 1 MiB each


def collect(root: Path) -> list[tuple[str, bytes]]:
    """(relative path, content) of every file a container sees under `root`: symlinks
    followed (the kubelet's keys point into `..data`), its `..`-names skipped."""
    found: list[tuple[str, bytes]] = []
    total = 0

    def walk(directory: Path, prefix: str) -> None:
        nonlocal total
        for name in sorted(os.listdir(directory)):
            if name.startswith(".."):  # the atomic writer's ..data and ..<timestamp> entries
                continue
            path = directory / name
            if path.is_dir():
                walk(path, f"{prefix}{name}/")
            elif path.is_file():
                data = path.read_bytes()
                total += len(data)
                if total > MAX_VOLUME_BYTES:
                    raise SpecError(f"volume at {root}: more than {MAX_VOLUME_BYTES // 2**20} MiB; "
                                    "large data belongs on the HPC side's file system")
                found.append((prefix + name, data))

    walk(root, "")
    return found


def upload_volumes(files: FileStore, spec: JobSpec, paths: JobPaths, local_dir: str = VOLUMES_DIR) -> int:
    """Copy the pod's file volumes into the job directory; the number of files copied."""
    wanted = [volume.name for volume in spec.volumes if volume.kind == "files"]
    if not wanted:
        return 0
    files.mkdir(paths.job_dir, 0o700)
    files.mkdir(paths.volumes, 0o700)
    count = 0
    for name in wanted:
        root = Path(local_dir) / name
        try:
            content = collect(root)
        except OSError as exc:
            raise SpecError(f"volume {name!r}: cannot read it at {root} ({exc.strerror}); the webhook "
                            "mounts it there in the leader container") from None
        base = f"{paths.volumes}/{name}"
        files.mkdir(base, 0o700)
        made = {base}
        for relative, data in content:
            *folders, _ = relative.split("/")
            for depth in range(1, len(folders) + 1):  # each level 0700, not only the last
                folder = f"{base}/{'/'.join(folders[:depth])}"
                if folder not in made:
                    files.mkdir(folder, 0o700)
                    made.add(folder)
            files.write_file(f"{base}/{relative}", data, 0o600)
            count += 1
    log.info("copied %d file(s) of volume(s) %s to the HPC side (0600)", count, ", ".join(wanted))
    return count
