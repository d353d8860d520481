"""Build `helm` from its Go module (helm.sh/helm/v3) and cache it like the Kubernetes binaries.

No release download: a wrapper module requires `helm.sh/helm/v3` at a pinned version (its own
go.mod has no `replace` lines, so nothing needs pinning), `go mod tidy` fills go.sum, and one
`go build` makes the binary with the version stamps helm's Makefile sets. The result is kept
under the cache per version; a later call only checks that it is there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from e2e.cluster import build_once
from e2e.cluster.config import CACHE_DIR

HELM_VERSION = os.environ.get("HPC_OFFLOAD_HELM_VERSION", "v3.22.0")
HELM_MODULE = "helm.sh/helm/v3"
GO = Path(os.environ.get("HPC_OFFLOAD_GO", "/usr/local/go/bin/go"))

Progress = Callable[[str], None]


def helm_dir(version: str = HELM_VERSION) -> Path:
    return CACHE_DIR / "helm" / version


def helm_path(version: str = HELM_VERSION) -> Path:
    return helm_dir(version) / "bin" / "helm"


def is_built(version: str = HELM_VERSION) -> bool:
    return build_once.is_built(helm_dir(version) / "bin", "helm")


def _go_env() -> dict[str, str]:
    # the same module and build caches as the Kubernetes build (scripts/lib.sh), never a
    # downloaded toolchain
    return {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0",
            "GOMODCACHE": os.environ.get("GOMODCACHE", str(CACHE_DIR / "go-mod")),
            "GOCACHE": os.environ.get("GOCACHE", str(CACHE_DIR / "go-build"))}


def _run(cmd: list[str], cwd: Path, log: Path) -> str:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), capture_output=True, text=True)
    with open(log, "a") as out:
        out.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}): {tail}; see {log}")
    return proc.stdout


def wrapper_gomod(upstream: str, version: str) -> str:
    """A module that requires helm at `version`, with the `go` line of helm's own go.mod."""
    go_line = re.search(r"^go (\S+)$", upstream, re.MULTILINE)
    if go_line is None:
        raise ValueError("helm's go.mod has no go line")
    return (f"module hpc-offload.local/helm-build\n\ngo {go_line.group(1)}\n\n"
            f"require {HELM_MODULE} {version}\n")


def ldflags(version: str, client_go: str) -> str:
    """helm's Makefile stamps: its version, and the Kubernetes version `helm template`
    assumes (client-go v0.N.M -> 1.N)."""
    minor = client_go.removeprefix("v").split(".")[1]
    flags = ["-s", "-w", f"-X {HELM_MODULE}/internal/version.version={version}",
             f"-X {HELM_MODULE}/internal/version.gitTreeState=clean"]
    for pkg in ("pkg/lint/rules", "pkg/chartutil"):
        flags += [f"-X {HELM_MODULE}/{pkg}.k8sVersionMajor=1", f"-X {HELM_MODULE}/{pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


def ensure_helm(version: str = HELM_VERSION, progress: Progress = print) -> Path:
    """Build (once, whoever asks at the same time) and return the path of `helm` at `version`."""
    if not is_built(version) and not GO.exists():
        raise RuntimeError(f"Go not found at {GO} (set HPC_OFFLOAD_GO)")
    base = helm_dir(version)

    def build(into: Path) -> None:
        work = base / "src"
        work.mkdir(parents=True, exist_ok=True)
        log = base / "build.log"
        start = time.monotonic()
        progress(f"build: helm {version} from {HELM_MODULE} (log: {log})")
        (work / "go.mod").write_text("module hpc-offload.local/probe\n\ngo 1.24\n")
        info = json.loads(_run([str(GO), "mod", "download", "-json", f"{HELM_MODULE}@{version}"], work, log))
        upstream = Path(info["GoMod"]).read_text()
        client_go = re.search(r"^\s*k8s\.io/client-go (v\S+)", upstream, re.MULTILINE)
        (work / "go.mod").write_text(wrapper_gomod(upstream, version))
        (work / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{HELM_MODULE}/cmd/helm"\n')
        _run([str(GO), "mod", "tidy"], work, log)
        progress(f"build: helm modules ready ({time.monotonic() - start:.0f}s); compiling")
        flags = ldflags(version, client_go.group(1) if client_go else "v0.34.0")
        _run([str(GO), "build", "-trimpath", f"-ldflags={flags}", "-o", str(into / "helm"),
              f"{HELM_MODULE}/cmd/helm"], work, log)
        progress(f"build: helm {version} done in {time.monotonic() - start:.0f}s -> {helm_path(version)}")

    build_once.build_once(base / "bin", build, version, "helm")
    return helm_path(version)
