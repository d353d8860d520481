"""Two test lanes asking for helm at the same moment on a fresh machine: one removed the
other's half-built directory and the other failed (FileNotFoundError: bin.partial/.complete).
Here `ensure_helm` runs in two processes at once with a stand-in `go` that takes a second to
"compile" and counts its builds: both get the one helm, built once."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from e2e.cluster import build_once, helm

FAKE_GO = """#!/bin/sh
# a stand-in for `go`: mod download prints helm's module, build takes a second and counts itself
case "$1 $2" in
  "mod download") printf '{"GoMod": "%s"}\\n' "$FAKE_GOMOD" ;;
  "mod tidy") ;;
  build*) while [ "$1" != "-o" ]; do shift; done
          sleep 1; echo build >> "$FAKE_BUILDS"; printf '#!/bin/sh\\necho v3\\n' > "$2"; chmod +x "$2" ;;
esac
"""


@pytest.fixture
def fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    go = tmp_path / "go"
    go.write_text(FAKE_GO)
    go.chmod(go.stat().st_mode | stat.S_IXUSR)
    gomod = tmp_path / "helm.go.mod"
    gomod.write_text("module helm.sh/helm/v3\n\ngo 1.24.0\n\nrequire k8s.io/client-go v0.34.0\n")
    monkeypatch.setenv("FAKE_GOMOD", str(gomod))
    monkeypatch.setenv("FAKE_BUILDS", str(tmp_path / "builds"))
    monkeypatch.setattr(helm, "GO", go)
    monkeypatch.setattr(helm, "CACHE_DIR", tmp_path / "cache")
    return tmp_path


def _ensure(results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        results.put(str(helm.ensure_helm(progress=lambda _: None)))
    except Exception as exc:  # noqa: BLE001 - the test reports what the process met
        results.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_asking_at_once_get_the_one_helm_built_once(fake_go: Path) -> None:
    context = multiprocessing.get_context("fork")  # the monkeypatched module goes with them
    results = context.Queue()
    lanes = [context.Process(target=_ensure, args=(results,)) for _ in range(2)]
    for lane in lanes:
        lane.start()
    got = [results.get(timeout=60) for _ in lanes]
    for lane in lanes:
        lane.join(10)
    expected = str(fake_go / "cache" / "helm" / helm.HELM_VERSION / "bin" / "helm")
    assert got == [expected, expected]
    assert (fake_go / "builds").read_text() == "build\n"
    assert helm.is_built()


def test_a_failed_build_leaves_nothing_marked_built_and_the_next_call_builds(tmp_path: Path) -> None:
    target = tmp_path / "bin"

    def fails(into: Path) -> None:
        (into / "tool").write_text("half")
        raise RuntimeError("compiler died")

    with pytest.raises(RuntimeError, match="compiler died"):
        build_once.build_once(target, fails, "v1", "tool")
    assert not build_once.is_built(target, "tool")

    def works(into: Path) -> None:
        (into / "tool").write_text("whole")

    build_once.build_once(target, works, "v1", "tool")
    assert (target / "tool").read_text() == "whole" and build_once.is_built(target, "tool")
