"""`hpc-offload e2e cluster …`: the local Kubernetes the e2e tests run against."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from e2e.cluster import cluster
from e2e.cluster.config import Paths


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


@click.group("e2e")
def e2e() -> None:
    """End-to-end testing against a real Kubernetes built from source on this machine."""


@e2e.group("cluster")
def cluster_group() -> None:
    """Build, start, stop and describe the local cluster (state: /var/lib/hpc-offload/cluster)."""


@cluster_group.command("up")
@click.option(
    "--load-image/--no-load-image",
    default=False,
    help="Also build and import the project image hpc-offload:dev.",
)
def up(load_image: bool) -> None:
    """Build the binaries (cached) and start everything that is not running; idempotent."""
    start = time.monotonic()
    try:
        info = cluster.ensure_up(progress=_echo)
        if load_image:
            cluster.load_image(progress=_echo)
    except (RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc
    _echo(f"up in {time.monotonic() - start:.1f}s")
    click.echo(f"export KUBECONFIG={info.kubeconfig}")


@cluster_group.command("down")
@click.option("--keep-bridge", is_flag=True, help="Leave cni0 (10.88.0.1) in place.")
def down(keep_bridge: bool) -> None:
    """Stop what `up` started, unmount, clean host traces and remove the state dir."""
    cluster.down(progress=_echo, keep_bridge=keep_bridge)


@cluster_group.command("status")
def status() -> None:
    """Each component's process and the node's readiness (exit 1 unless Ready)."""
    rows = cluster.status()
    width = max(len(name) for name, _ in rows)
    for name, state in rows:
        click.echo(f"{name:<{width}}  {state}")
    sys.exit(0 if rows[-1][1] == "Ready" else 1)


@cluster_group.command("kubeconfig")
@click.option("--raw", is_flag=True, help="Print the file's content instead of its path.")
def kubeconfig(raw: bool) -> None:
    """Path of the admin kubeconfig (use: export KUBECONFIG=$(hpc-offload e2e cluster kubeconfig))."""
    path = Paths().admin_kubeconfig
    if not path.exists():
        raise click.ClickException("no cluster: run `hpc-offload e2e cluster up`")
    click.echo(path.read_text() if raw else str(path))


@cluster_group.command("load-image")
@click.option(
    "--context",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Build context holding the Dockerfile (default: this repository).",
)
@click.option("--force", is_flag=True, help="Rebuild even if the inputs are unchanged.")
def load_image(context: Path | None, force: bool) -> None:
    """Build hpc-offload:dev from the Dockerfile (buildah) and import it into the node."""
    start = time.monotonic()
    try:
        name = cluster.load_image(context=context, progress=_echo, force=force)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    _echo(f"loaded {name} in {time.monotonic() - start:.1f}s")
