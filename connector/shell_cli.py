"""`hpc-connector shell`: a shell (or a command) inside the running HPC job's allocation.

Run in the connector container (`kubectl hpc shell POD` does `kubectl exec` into it), which
already holds the profile's credentials: no HPC credential ever reaches the user's machine.
The connector's state file names the job; the backend builds the command (SLURM: `srun
--jobid=ID --overlap --pty …` over the profile's SSH access) and this process becomes it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from connector.backends import backend_class
from connector.backends.base import Capability, JobState
from connector.errors import ConnectorError
from connector.profile import load_profile_dir
from connector.state import StateStore

BASE = Path("/var/run/hpc-offload")


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--profile", "profile_dir", default=str(BASE / "profile"), show_default=True,
              type=click.Path(file_okay=False), help="The mounted backend profile.")
@click.option("--state-dir", default=str(BASE / "state"), show_default=True,
              type=click.Path(file_okay=False), help="The connector's state (which job this pod runs).")
@click.option("--tty/--no-tty", default=None, help="Give the command a terminal [default: if stdin is one].")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def shell(profile_dir: str, state_dir: str, tty: bool | None, command: tuple[str, ...]) -> None:
    """Open a shell (or run COMMAND) inside this pod's running HPC job."""
    try:
        record = StateStore(state_dir).load()
        for part in sorted(Path(state_dir).glob("part-*")) if record is None else ():
            record = record or StateStore(part).load()  # a whole pod: every part names the one job
        if record is None:
            raise click.ClickException("no HPC job yet: the connector has not submitted one (see the pod log)")
        profile = load_profile_dir(profile_dir)
        backend = backend_class(profile.backend)(profile, runtime_dir=state_dir)
        if Capability.SHELL not in backend.capabilities:
            raise click.ClickException(f"backend {backend.type_name} cannot open a shell in a job's allocation")
        status = backend.status(record.job_id)
        if status.state is JobState.PENDING:
            where = f" (position {status.queue_position} in queue)" if status.queue_position else ""
            raise click.ClickException(f"HPC job {record.job_id} is still pending{where}: "
                                       "there is no allocation to enter yet")
        if status.state.ended:
            raise click.ClickException(f"HPC job {record.job_id} has ended "
                                       f"({status.raw_state or status.state.value}): nothing to enter")
        use_tty = sys.stdin.isatty() if tty is None else tty
        argv = backend.shell_argv(record.handle, list(command), use_tty)
    except ConnectorError as exc:
        raise click.ClickException(exc.message) from None
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - argv is built from quoted parts, no shell here
