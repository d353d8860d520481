"""`hpc-offload testbed …`: a real single-node SLURM on this machine for demos and tests."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import api
from . import listen as listen_mod
from . import profile as profile_mod
from .daemons import DaemonError

log = logging.getLogger("testbed")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now (click's test runner swaps it per call)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("testbed: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-q", "--quiet", is_flag=True, help="Only print errors.")
def testbed(quiet: bool) -> None:
    """A real single-node SLURM (munge, slurmctld, slurmd, slurmrestd, and slurmdbd over a
    MariaDB of its own, so `sacct` works) and Grid Engine
    (sge_qmaster, sge_execd) plus an sshd, a test user and a Rimrock-compatible REST server
    (the paper's backend), started directly with pid files (no systemd) for demos and tests.

    \b
    State (keys, SLURM state, logs, pid files): $HPC_OFFLOAD_TESTBED_DIR,
    default /var/lib/hpc-offload/testbed. Needs root.
    """
    _setup_logging(not quiet)


@testbed.command()
@click.option("--listen", "listen_on", multiple=True, metavar="ADDR",
              help="Also serve sshd, slurmrestd and rimrock on ADDR (repeatable; 127.0.0.1 "
                   "always). Remembered for later runs while the address exists, e.g. 10.88.0.1 "
                   "so pods of the e2e cluster reach the testbed.")
@click.option("--forget-listen", is_flag=True,
              help="Drop the addresses remembered from earlier runs (127.0.0.1 stays).")
def up(listen_on: tuple[str, ...], forget_listen: bool) -> None:
    """Install what is missing and start what is not running; idempotent.

    \b
    Installs slurm-wlm munge slurmrestd slurm-wlm-jwt-plugin slurmdbd mariadb-server
    openssh-server charliecloud debootstrap gridengine-master gridengine-exec
    gridengine-client with apt-get if missing, creates user hpcuser, writes
    /etc/slurm/slurm.conf and slurmdbd.conf (0600: it holds the database password), starts
    munged, mariadbd (own datadir and socket, no TCP), slurmdbd (:6819; cluster, account
    and hpcuser registered, associations not enforced), slurmctld, slurmd, slurmrestd
    (:6820), sshd (:2222), sge_qmaster (:6444) and sge_execd
    (:6445) with queue all.q and parallel environment smp, and rimrock (:6830: Rimrock's
    /api/jobs in front of SLURM over SSH, proxies from the testbed's own grid CA), and
    returns once all take requests. About a second when already up; recovers from stale
    pid files; restarts a daemon whose settings (or, for rimrock, code) changed.
    """
    try:
        i = api.ensure_up(listen=listen_on, forget_listen=forget_listen)
    except api.TestbedError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"ssh  {i.ssh_user}@{i.ssh_host} -p {i.ssh_port} -i {i.key_path} "
               f"-o UserKnownHostsFile={i.known_hosts}")
    click.echo(f"rest {i.rest_url} (api {i.rest_api_version})   image {i.image_dir}")


@testbed.command()
def down() -> None:
    """Stop the daemons `up` started (by their pid files; nothing else is signalled).

    Packages, users, keys, slurm.conf, SLURM's job state and the accounting database are
    kept, so the next `up` is quick and finished jobs are still known (to `sacct` too).
    """
    stopped = api.down()
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@testbed.command()
def clear() -> None:
    """Cancel every job of the test user (SLURM and Grid Engine) and wait for empty queues.

    The test command runs it first: jobs left by an earlier run or a benchmark would hold
    the node's two CPUs and keep every test job pending behind them.
    """
    try:
        cancelled = api.clear_queues()
    except (api.TestbedError, DaemonError) as exc:  # a manager not answering: say which
        raise click.ClickException(str(exc)) from None
    click.echo(f"cancelled {cancelled} job(s)" if cancelled else "queues empty")


@testbed.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """Show each daemon (running or not, pid, addresses). Exit 0 if all run, else 1."""
    rows = api.status()
    ok = all(r.running for r in rows)
    if as_json:
        click.echo(json.dumps({"up": ok, "daemons": [
            {"name": r.name, "running": r.running, "pid": r.pid,
             "addresses": list(r.addresses), "note": r.note} for r in rows],
            "info": api.info().as_dict()}, indent=2))
    else:
        click.echo(f"{'DAEMON':<11} {'STATE':<8} {'PID':>7}  ADDRESS")
        for r in rows:
            state = "running" if r.running else "stopped"
            pid = str(r.pid) if r.pid else "-"
            note = f"  ({r.note})" if r.note else ""
            click.echo(f"{r.name:<11} {state:<8} {pid:>7}  {', '.join(r.addresses)}{note}")
    sys.exit(0 if ok else 1)


@testbed.command()
@click.argument("kind", metavar="TYPE", type=click.Choice(profile_mod.TYPES))
@click.option("--name", default="testbed", show_default=True,
              help="Name of the ConfigMap and Secret (the value of hpc.offload/backend).")
@click.option("--host", default=None,
              help="Address the profile points at; must be one the testbed listens on "
                   "[default: the local cluster's bridge 10.88.0.1 when it exists, else 127.0.0.1].")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Write the keys as files here (secrets 0600), as the connector sees "
                   "them in a pod, instead of printing YAML.")
def profile(kind: str, name: str, host: str | None, directory: Path | None) -> None:
    """Print a backend profile for the testbed: a ConfigMap and a Secret (YAML).

    \b
    TYPE slurm-ssh:   host/port/user/workdir + ssh-privatekey and known_hosts
    TYPE slurm-local: workdir only (the connector runs sbatch itself)
    TYPE slurm-rest:  endpoint + a 24 h token from `scontrol token`
    TYPE rimrock:     endpoint (:6830) + login host + a 7-day proxy from the testbed grid CA
    TYPE sge-ssh:     as slurm-ssh, for Grid Engine (queue all.q, parallel environment smp)
    TYPE sge-local:   workdir, queue and pe only (the connector runs qsub itself)
    The Secret's values are credentials: they only go to stdout (or 0600 files).
    Apply with: hpc-offload testbed profile slurm-ssh | kubectl apply -n NS -f -
    """
    if host is None:
        host, why = listen_mod.default_host()
        click.echo(f"testbed: profile host {host} ({why}; --host to choose another)", err=True)
    try:
        profile_mod.check_ready(kind, host)
        if directory is not None:
            written = profile_mod.write_dir(directory, kind, host)
            log.info("profile: wrote %s in %s", ", ".join(p.name for p in written), directory)
        else:
            click.echo(profile_mod.manifests(name, kind, host), nl=False)
    except (profile_mod.ProfileError, api.TestbedError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    except RuntimeError as exc:  # e.g. scontrol token failed: slurmctld not running
        raise click.ClickException(f"{exc} (is the testbed up? `hpc-offload testbed status`)"
                                   ) from None

