"""`hpc-offload`: the command line for users, admins and developers.

The user's commands (render, jobs, shell) are also the kubectl plugin's (`hpc_cli.kubectl`);
the admin's and developer's (serve, certs, relay, chart, testbed, e2e) are only here.
"""

from __future__ import annotations

import click

from hpc_cli.lazy import Entry, LazyGroup

#: `kubectl hpc …`: what a user of a cluster needs on their own machine (extra `cli`)
USER_COMMANDS: dict[str, Entry] = {
    "render": Entry("hpc_cli.render:render", "Print manifests as the webhook would mutate them.",
                    "cli", ("orjson",)),
    "jobs": Entry("hpc_cli.jobs:jobs", "List offloaded pods with their HPC job, state and queue position.",
                  "cli", ("kubernetes",)),
    "shell": Entry("hpc_cli.shell:shell", "Open a shell (or run a command) inside a pod's running HPC job."),
}

#: admin and developer commands: the webhook, its certificates, the relay, the chart, the testbed
ADMIN_COMMANDS: dict[str, Entry] = {
    "serve": Entry("hpc_cli.serve:serve", "Serve the admission webhook over TLS (gunicorn).", "webhook",
                   ("flask", "gunicorn")),
    "certs": Entry("certs.cli:certs", "Generate and install the webhook's certificates.", "webhook",
                   ("cryptography", "kubernetes")),
    "relay": Entry("relay.cli:relay", "Serve the relay: one site session per profile for every connector.",
                   "webhook", ("aiohttp",)),
    "chart": Entry("hpc_cli.chart:chart", "Generate the Helm chart from the kustomize base (and check it)."),
    "testbed": Entry("testbed.cli:testbed", "Start, stop and describe the local SLURM testbed.", "test"),
    "e2e": Entry("e2e.cluster.cli:e2e", "The local Kubernetes cluster used by the e2e tests.", "test",
                 ("kubernetes",)),
}


@click.group(cls=LazyGroup, commands_table={**USER_COMMANDS, **ADMIN_COMMANDS},
             context_settings={"help_option_names": ["-h", "--help"]})
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
