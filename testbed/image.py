"""The charliecloud image directory jobs run in (`ch-run IMAGE -- python3 …`).

The shared debootstrap rootfs is root-owned and world-readable, which is all an
unprivileged `ch-run` needs, so it is used in place: no copy of 260 MB to keep in sync.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .rootfs import DEFAULT_ROOTFS, ensure_python_rootfs

log = logging.getLogger("testbed")


def ensure_image() -> Path:
    """Build the rootfs if needed (about a minute, once) and return it as the image dir."""
    if not (DEFAULT_ROOTFS / ".hpc-offload-rootfs-complete").exists():
        log.info("image: building the python3 rootfs with debootstrap (about a minute)")
    path = ensure_python_rootfs()
    log.info("image: %s", path)
    return path


def image_dir() -> Path:
    return DEFAULT_ROOTFS
