"""`hpc-offload`: the admin and user command line.

Sub-commands live beside the code they drive and are imported only when called, so
`hpc-offload --help` stays fast and a connector image never loads the webhook's libraries.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command or group
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("hpc_cli.serve:serve", "Serve the admission webhook over TLS (gunicorn)."),
    "render": ("hpc_cli.render:render", "Print manifests as the webhook would mutate them."),
    "certs": ("certs.cli:certs", "Generate and install the webhook's certificates."),
    "testbed": ("testbed.cli:testbed", "Start, stop and describe the local SLURM testbed."),
    "e2e": ("e2e.cluster.cli:e2e", "The local Kubernetes cluster used by the e2e tests."),
    "jobs": ("hpc_cli.jobs:jobs", "List offloaded pods with their HPC job id and state."),
    "relay": ("relay.cli:relay", "Serve the relay: one site session per profile for every connector."),
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target[0].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # an optional extra is not installed
            return _unavailable(cmd_name, target[1], exc)
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in sorted(SUBCOMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, help_: str, exc: ImportError) -> click.Command:
    @click.command(name=name, help=help_)
    def missing() -> None:
        raise click.ClickException(
            f"'{name}' needs a part that is not installed ({exc.name}); "
            "install it with: pip install 'hpc-offload[webhook]'"
        )

    return missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpc-offload")
def cli() -> None:
    """hpc-offload: run annotated Kubernetes pods as HPC (SLURM) jobs.

    \b
    Add `hpc.offload/backend: PROFILE` to a pod or job template; the webhook turns the
    container into a connector that submits, follows, streams and cancels the HPC job.
    """


def main() -> None:
    cli(prog_name="hpc-offload")


if __name__ == "__main__":
    main()
