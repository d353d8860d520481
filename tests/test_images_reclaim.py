"""The e2e image build's clean-up is best effort: a build that succeeded is never failed by it
(a `buildah rmi --prune` refused — an image still in use — failed CI's image load)."""

from __future__ import annotations

import subprocess
from collections import namedtuple
from pathlib import Path

from e2e.cluster import images


def test_a_refused_prune_is_said_and_the_build_goes_on(monkeypatch, tmp_path: Path) -> None:
    said: list[str] = []
    usage = namedtuple("usage", "total used free")

    def refuse(*args: str) -> str:
        raise subprocess.CalledProcessError(125, ["buildah", *args], stderr="Error: image is in use by a container\n")

    monkeypatch.setattr(images, "IMAGE_CACHE", tmp_path)
    monkeypatch.setattr(images.shutil, "disk_usage", lambda _: usage(100 << 30, 90 << 30, 10 << 30))
    monkeypatch.setattr(images, "buildah", refuse)
    images._reclaim(tmp_path / "current.oci.tar", said.append)
    assert said[-1] == ("images: could not remove every untagged image "
                        "(Error: image is in use by a container); going on")
