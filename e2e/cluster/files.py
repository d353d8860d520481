"""Config files written only when their content changes.

kube-proxy watches its config file and exits on any write, even an identical one, so an
idempotent `up` must not touch files whose content is already right.
"""

from __future__ import annotations

from pathlib import Path


def write_if_changed(path: Path, content: str, mode: int | None = None) -> bool:
    """Write `content` unless the file already holds it; True if written."""
    try:
        if path.read_text() == content:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content)
    if mode is not None:
        tmp.chmod(mode)
    tmp.replace(path)
    return True
