"""`kubectl-hpc`, the kubectl plugin: `kubectl hpc render|jobs|shell`, the user's commands only
(admin and developer commands stay on `hpc-offload`)."""

from __future__ import annotations

import click

from hpc_cli.lazy import LazyGroup
from hpc_cli.main import USER_COMMANDS


@click.group(cls=LazyGroup, commands_table=USER_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpc-offload")
def plugin() -> None:
    """kubectl hpc: your pods that run as HPC jobs (hpc-offload)."""


def main() -> None:
    plugin(prog_name="kubectl hpc")


if __name__ == "__main__":
    main()
