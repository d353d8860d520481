"""Images for the node, made locally with buildah and imported into containerd (no registry).

- pause: a static C binary in an image from scratch; containerd's `sandbox_image`.
- base: the debootstrap python3 rootfs (testbed.rootfs) as an image, the project Dockerfile's
  BASE_IMAGE here (its default, python:3.11-slim, would need a registry).
- project: `buildah bud` of the repo's Dockerfile, tagged hpc-offload:dev and
  docker.io/library/hpc-offload:dev (what a pod asking for `hpc-offload:dev` resolves to).

Every image is saved as an OCI archive under the cache keyed by a hash of its inputs, so a
warm run only imports (or finds the image already in containerd).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from e2e.cluster.config import (
    BASE_IMAGE,
    CACHE_DIR,
    PAUSE_IMAGE,
    PROJECT_IMAGE,
    PROJECT_IMAGE_FULL,
    Paths,
)
from e2e.cluster.node import ctr

IMAGE_CACHE = CACHE_DIR / "images"
BUILDAH_ROOT = CACHE_DIR / "buildah" / "storage"
BUILDAH_RUNROOT = Path("/run/hpc-offload-buildah")
PAUSE_SRC = Path(__file__).with_name("pause.c")
REPO_ROOT = Path(__file__).resolve().parents[2]

Progress = Callable[[str], None]


def buildah(*args: str, log: Path | None = None) -> str:
    """buildah on our own vfs store (vfs: works anywhere, no overlay-on-overlay surprises)."""
    cmd = [
        "buildah",
        "--storage-driver=vfs",
        f"--root={BUILDAH_ROOT}",
        f"--runroot={BUILDAH_RUNROOT}",
        *args,
    ]
    if shutil.which("buildah") is None:
        raise RuntimeError("buildah not found: apt-get install buildah")
    if log is None:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        raise RuntimeError(f"buildah {args[0]} failed (exit {proc.returncode}); see {log}")
    return ""


_held = threading.local()


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    """One user of the build store at a time, across processes (re-entrant in a thread): a
    prune during another process's build left layers "not known" to that build."""
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    BUILDAH_ROOT.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILDAH_ROOT.parent / "store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0


def _digest_files(files: Iterator[tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    for rel, path in sorted(files):
        h.update(rel.encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"")
        h.update(b"\0")
    return h.hexdigest()[:16]


def _archive(kind: str, key: str) -> Path:
    return IMAGE_CACHE / f"{kind}-{key}.oci.tar"


def _push_archive(name: str, archive: Path) -> None:
    tmp = archive.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    buildah("push", name, f"oci-archive:{tmp}:{name}")
    tmp.rename(archive)


def _image_in_store(name: str) -> bool:
    try:
        buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", name)
        return True
    except subprocess.CalledProcessError:
        return False


def import_archive(paths: Paths, archive: Path, names: tuple[str, ...]) -> None:
    """Import an OCI archive into containerd's k8s.io namespace under every name in `names`."""
    marker = paths.run / f"imported-{archive.name}"
    if marker.exists() and all(_in_containerd(paths, n) for n in names):
        return
    out = ctr(paths, "images", "import", str(archive))
    imported = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("unpacking")]
    source = names[0] if _in_containerd(paths, names[0]) else (imported[0] if imported else "")
    if not source:
        raise RuntimeError(f"import of {archive} produced no image: {out.stdout}{out.stderr}")
    for name in names:
        if name != source:
            ctr(paths, "images", "rm", name, check=False)
            ctr(paths, "images", "tag", source, name)
    marker.write_text(time.strftime("%F %T\n"))


def _in_containerd(paths: Paths, name: str) -> bool:
    return name in ctr(paths, "images", "ls", "-q", f"name=={name}", check=False).stdout.split()


def ensure_pause_image(paths: Paths, progress: Progress = print) -> None:
    key = _digest_files(iter([("pause.c", PAUSE_SRC)]))
    archive = _archive("pause", key)
    with store_lock():
        if not archive.exists():
            _build_pause(archive, progress)
    import_archive(paths, archive, (PAUSE_IMAGE,))


def _build_pause(archive: Path, progress: Progress) -> None:
    progress("images: building the pause image (gcc -static, buildah from scratch)")
    work = CACHE_DIR / "pause-build"
    work.mkdir(parents=True, exist_ok=True)
    binary = work / "pause"
    subprocess.run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(PAUSE_SRC)], check=True)
    container = buildah("from", "scratch")
    try:
        buildah("copy", "--chmod", "0755", container, str(binary), "/pause")
        buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
        buildah("commit", "--rm", container, PAUSE_IMAGE)
    except subprocess.CalledProcessError:
        buildah("rm", container)
        raise
    _push_archive(PAUSE_IMAGE, archive)


def ensure_base_image(progress: Progress = print) -> str:
    """The python3 base in buildah's store (from the shared debootstrap rootfs); its name."""
    from testbed.rootfs import ensure_python_rootfs

    rootfs = ensure_python_rootfs()
    with store_lock():
        return _base_image(rootfs, progress)


def _base_image(rootfs: Path, progress: Progress) -> str:
    stamp = BUILDAH_ROOT.parent / "base-image.stamp"
    source_stamp = str(rootfs.stat().st_mtime_ns)
    if _image_in_store(BASE_IMAGE) and stamp.exists() and stamp.read_text() == source_stamp:
        return BASE_IMAGE
    progress(f"images: making {BASE_IMAGE} from {rootfs}")
    container = buildah("from", "scratch")
    try:
        buildah("copy", container, f"{rootfs}/", "/")
        buildah(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            '["python3"]',
            container,
        )
        buildah("commit", "--rm", container, BASE_IMAGE)
    except subprocess.CalledProcessError:
        buildah("rm", container)
        raise
    stamp.write_text(source_stamp)
    return BASE_IMAGE


def _dockerignore(context: Path) -> list[str]:
    ignore = context / ".dockerignore"
    if not ignore.exists():
        return []
    lines = (line.strip() for line in ignore.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def _excluded(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; `!` re-includes; a match on a parent
    directory counts for everything under it."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.rsplit("/", 1)[-1], pattern[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def _context_files(context: Path) -> Iterator[tuple[str, Path]]:
    """Files the build can see, per .dockerignore (names, globs, `**/`, `!`)."""
    patterns = _dockerignore(context)
    reincluded = [p.removeprefix("!") for p in patterns if p.startswith("!")]
    for dirpath, dirnames, filenames in os.walk(context):
        base = Path(dirpath)
        rel_dir = base.relative_to(context).as_posix()

        def rel(name: str, rel_dir: str = rel_dir) -> str:
            return name if rel_dir == "." else f"{rel_dir}/{name}"

        dirnames[:] = [
            d
            for d in dirnames
            if not _excluded(rel(d), patterns) or any(r.startswith(rel(d) + "/") for r in reincluded)
        ]
        for f in filenames:
            if not _excluded(rel(f), patterns):
                yield rel(f), base / f


def project_image_key(context: Path = REPO_ROOT) -> str:
    """Hash of everything the build reads: Dockerfile, .dockerignore, context, base image."""
    files = list(_context_files(context))
    files += [(f"//{n}", context / n) for n in ("Dockerfile", ".dockerignore")]
    return _digest_files(iter(files))


def _host_pip_build_args() -> list[str]:
    """Let pip inside RUN trust the same CA bundle as the host (TLS-intercepting networks)."""
    args: list[str] = []
    bundle = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
    if bundle.exists():
        args += [
            "--volume",
            f"{bundle}:/etc/hpc-offload-host-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/etc/hpc-offload-host-ca.crt",
        ]
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT"):
        if os.environ.get(var):
            args += ["--build-arg", f"{var}={os.environ[var]}"]
    return args


def _go_build_args(base: str) -> list[str]:
    """The follower's build stage on the local base image, with this host's Go and its build
    cache mounted (no registry here for the golang image the Dockerfile names by default)."""
    from e2e.cluster.build import GO

    goroot = GO.parent.parent
    cache = CACHE_DIR / "go-build"
    cache.mkdir(parents=True, exist_ok=True)
    return ["--build-arg", f"GO_IMAGE={base}", "--volume", f"{goroot}:/usr/local/go:ro",
            "--volume", f"{cache}:/go-cache", "--build-arg", "GOCACHE_DIR=/go-cache"]


def build_project_image(
    paths: Paths, context: Path = REPO_ROOT, progress: Progress = print, force: bool = False
) -> Path:
    """Build (if its inputs changed) the project image; returns its cached OCI archive."""
    with store_lock():
        return _build_project(context, progress, force)


def _build_project(context: Path, progress: Progress, force: bool) -> Path:
    base = ensure_base_image(progress)
    key = project_image_key(context)
    archive = _archive("hpc-offload", key)
    if archive.exists() and not force:
        return archive
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    log = IMAGE_CACHE / f"hpc-offload-{key}.build.log"
    progress(f"images: buildah bud {context}/Dockerfile -> {PROJECT_IMAGE} (log: {log})")
    start = time.monotonic()
    try:
        _bud(context, base, log)
    except RuntimeError:
        if "layer not known" not in log.read_text(errors="replace"):
            raise
        # the layer cache lost a layer (an interrupted prune): drop what it knows, once
        progress("images: the build store's layer cache is broken; clearing it and building again")
        buildah("rm", "--all")
        buildah("rmi", "--all", "--force")
        (BUILDAH_ROOT.parent / "base-image.stamp").unlink(missing_ok=True)
        base = ensure_base_image(progress)
        _bud(context, base, log)
    _push_archive(PROJECT_IMAGE_FULL, archive)
    progress(f"images: built in {time.monotonic() - start:.0f}s")
    _reclaim(archive, progress)
    return archive


def _bud(context: Path, base: str, log: Path) -> None:
    buildah(
        "bud",
        "--isolation=chroot",
        "--network=host",
        "--pull=never",
        "--layers",
        "--build-arg",
        f"BASE_IMAGE={base}",
        *_host_pip_build_args(),
        *_go_build_args(base),
        "-f",
        str(context / "Dockerfile"),
        "-t",
        PROJECT_IMAGE_FULL,
        str(context),
        log=log,
    )


# The vfs store keeps a full copy of the root file system per layer (~0.5 GB): every code
# change adds several, and 15 builds filled 50 GB here. Below this much free disk, what no
# tagged image uses is removed after a build (the next build then re-makes its dependency
# layer: slower, never a full disk).
MIN_FREE_BYTES = 40 << 30


def _reclaim(current: Path, progress: Progress) -> None:
    """Old project archives always go; dangling store images when the disk runs low."""
    for old in IMAGE_CACHE.glob("hpc-offload-*.oci.tar"):
        if old != current:
            old.unlink(missing_ok=True)
    if shutil.disk_usage(BUILDAH_ROOT.parent).free < MIN_FREE_BYTES:
        progress("images: disk low; removing untagged images from the build store")
        try:  # best effort: the image is built; an image still in use stays for a later prune
            buildah("rmi", "--prune")
        except subprocess.CalledProcessError as exc:
            said = (exc.stderr or "").strip().splitlines()[-1:] or [f"exit {exc.returncode}"]
            progress(f"images: could not remove every untagged image ({said[0]}); going on")


def load_project_image(paths: Paths, context: Path = REPO_ROOT, progress: Progress = print, force: bool = False) -> str:
    """Build (cached) and import the project image into the node; returns the image name."""
    archive = build_project_image(paths, context, progress, force)
    import_archive(paths, archive, (PROJECT_IMAGE_FULL, PROJECT_IMAGE))
    return PROJECT_IMAGE
