"""A Debian root filesystem with python3, made locally with debootstrap.

It is the one base everything local is built on: the charliecloud image the testbed runs
jobs in, and the base image of the project's container image on the local cluster. No image
registry is needed; the packages come from the Debian mirror apt already uses.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

CACHE_DIR = Path(os.environ.get("HPC_OFFLOAD_CACHE", "/var/cache/hpc-offload"))
DEFAULT_ROOTFS = CACHE_DIR / "rootfs" / "bookworm-python3"
PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
_DONE_MARK = ".hpc-offload-rootfs-complete"


def debian_mirror() -> str:
    """The Debian URI apt is configured with on this machine."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        match = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        match = re.search(r"^deb\s+(\S+)\s+\S+\s+main", legacy.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def ensure_python_rootfs(path: Path = DEFAULT_ROOTFS, suite: str = "bookworm") -> Path:
    """Build the rootfs once (about a minute), then reuse it; safe under concurrent callers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / _DONE_MARK).exists():
            return path
        if shutil.which("debootstrap") is None:
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "debootstrap"],
                check=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                suite,
                str(partial),
                debian_mirror(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # world-readable so an unprivileged `ch-run` can use it as an image directory
        os.chmod(partial, 0o755)  # noqa: S103 - must be world-readable
        (partial / _DONE_MARK).write_text("ok\n")
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)
        return path
