"""Build the Kubernetes binaries from the Go module proxy (no release downloads, no registry).

A wrapper module requires `k8s.io/kubernetes` and pins each staging module (`k8s.io/api`, …)
with a `replace` line: k8s.io/kubernetes' own go.mod replaces them with `./staging/...`, which
does not exist in the module zip, so without the pins the build cannot resolve them. All
binaries come from one `go build` so the shared packages compile once; the result is cached per
version and a rerun only checks that the binaries are there.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from e2e.cluster import build_once
from e2e.cluster.config import CACHE_DIR, K8S_VERSION, k8s_bin_dir

BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)
GO = Path(os.environ.get("HPC_OFFLOAD_GO", "/usr/local/go/bin/go"))

Progress = Callable[[str], None]


def _go_env() -> dict[str, str]:
    # GOTOOLCHAIN=local: the local Go is newer than any `go` line we write; never fetch one.
    return {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}


def _run(cmd: list[str], cwd: Path, log: Path) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0:3]} failed (exit {proc.returncode}); see {log}")


def _upstream_gomod(version: str, work: Path, log: Path) -> str:
    """k8s.io/kubernetes' own go.mod at `version`, fetched through the module proxy."""
    out = subprocess.run(
        [str(GO), "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        cwd=work,
        env=_go_env(),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        log.open("a").write(out.stdout + out.stderr)
        raise RuntimeError(f"cannot fetch k8s.io/kubernetes@{version}: {out.stderr.strip()}")
    return Path(json.loads(out.stdout)["GoMod"]).read_text()


def wrapper_gomod(upstream: str, version: str) -> str:
    """The wrapper go.mod: upstream's `go` line, and every staging module pinned to v0.X.Y."""
    go_line = re.search(r"^go (\S+)$", upstream, re.MULTILINE)
    if go_line is None:
        raise ValueError("upstream go.mod has no go line")
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/\S+) => \./staging/", upstream, re.MULTILINE)))
    if not staging:
        raise ValueError("upstream go.mod has no staging replace lines")
    staging_version = "v0." + version.removeprefix("v1.")
    lines = [
        "module hpc-offload.local/k8s-build",
        "",
        f"go {go_line.group(1)}",
        "",
        f"require k8s.io/kubernetes {version}",
        "",
        "replace (",
        *(f"\t{mod} => {mod} {staging_version}" for mod in staging),
        ")",
        "",
    ]
    return "\n".join(lines)


def _tools_go() -> str:
    imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{b}"' for b in BINARIES)
    return f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"


def ldflags(version: str) -> str:
    """Version stamps; without them every binary reports v0.0.0-master."""
    major, minor = version.removeprefix("v").split(".")[:2]
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "gitCommit": "0000000000000000000000000000000000000000",
        "buildDate": date,
    }
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{key}={val}" for key, val in values.items()]
    return " ".join(flags)


def is_built(version: str = K8S_VERSION) -> bool:
    return build_once.is_built(k8s_bin_dir(version), *BINARIES)


def ensure_binaries(version: str = K8S_VERSION, progress: Progress = print) -> Path:
    """Build (once, whoever asks at the same time) and return the directory holding the
    binaries of `version`."""
    if not is_built(version) and not GO.exists():
        raise RuntimeError(f"Go not found at {GO} (set HPC_OFFLOAD_GO)")

    def build(into: Path) -> None:
        work = CACHE_DIR / "k8s" / version / "src"
        work.mkdir(parents=True, exist_ok=True)
        log = CACHE_DIR / "k8s" / version / "build.log"
        start = time.monotonic()
        progress(f"build: k8s {version}: resolving modules (log: {log})")
        (work / "go.mod").write_text("module hpc-offload.local/probe\n\ngo 1.24\n")
        upstream = _upstream_gomod(version, work, log)
        (work / "go.mod").write_text(wrapper_gomod(upstream, version))
        (work / "tools.go").write_text(_tools_go())
        _run([str(GO), "mod", "tidy"], work, log)
        progress(f"build: modules ready ({time.monotonic() - start:.0f}s); compiling {', '.join(BINARIES)} "
                 "(cold: ~5 min)")
        pkgs = [f"k8s.io/kubernetes/cmd/{b}" for b in BINARIES]
        _run([str(GO), "build", "-trimpath", f"-ldflags={ldflags(version)}", "-o", f"{into}/", *pkgs], work, log)
        progress(f"build: done in {time.monotonic() - start:.0f}s -> {k8s_bin_dir(version)}")

    return build_once.build_once(k8s_bin_dir(version), build, version, *BINARIES)
