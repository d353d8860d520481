"""`kubectl hpc shell POD [-c CONTAINER] [-- CMD…]`: a shell or a command in the pod's HPC job.

It is `kubectl exec` into the connector container, which runs `hpc-connector shell` there
(connector/shell_cli.py): the connector holds the profile's credentials and enters the job's
allocation (SLURM: `srun --jobid=ID --overlap`), so no HPC credential reaches this machine.
Only kubectl is needed here: the pod is read once (is it offloaded, which container, is it
running) so the common mistakes get a clear word before the exec.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from hpc_cli.jobs import container_status, is_offloaded, offloaded_container

CONNECTOR_MODULE = ("-m", "connector.cli")
KUBECTL_ENV = "HPC_OFFLOAD_KUBECTL"  # a kubectl other than the one on PATH


def connector_python(pod: Mapping[str, Any], container: str) -> str:
    """The interpreter the webhook gave the connector (its command's first word), else the
    webhook's default (webhook/config.py `connector_python`)."""
    for spec in (pod.get("spec") or {}).get("containers") or []:
        command = spec.get("command") or []
        if spec.get("name") == container and len(command) > 3 and tuple(command[2:4]) == CONNECTOR_MODULE:
            return str(command[0])
    from webhook.config import WebhookConfig

    return WebhookConfig().connector_python


def exec_argv(kubectl: Sequence[str], pod: str, container: str, python: str, tty: bool,
              command: Sequence[str], namespace: str | None = None) -> list[str]:
    """`kubectl exec -i[t] POD [-n NS] -c C -- PYTHON -I -m connector.cli shell --[no-]tty [-- CMD…]`;
    argv only (no shell), so nothing here is re-parsed by a shell."""
    argv = [*kubectl, "exec", "-it" if tty else "-i", pod]
    if namespace:
        argv += ["-n", namespace]
    argv += ["-c", container, "--", python, "-I", *CONNECTOR_MODULE, "shell", "--tty" if tty else "--no-tty"]
    if command:
        argv += ["--", *command]
    return argv


def check_pod(pod: Mapping[str, Any], name: str, container: str | None) -> str:
    """The connector container to enter, or a ClickException that says why there is none."""
    if not is_offloaded(pod):
        raise click.ClickException(f"pod {name} is not offloaded by hpc-offload (no hpc.offload/status: injected)")
    offloaded = offloaded_container(pod)
    if container is not None and offloaded is not None and container != offloaded:
        raise click.ClickException(f"container {container} of pod {name} is not offloaded; "
                                   f"the HPC job is container {offloaded}'s (-c {offloaded})")
    chosen = container or offloaded
    if chosen is None:
        raise click.ClickException(f"pod {name}: cannot tell which container is offloaded; name it with -c")
    state = (container_status(pod, chosen) or {}).get("state") or {}
    if "terminated" in state:
        raise click.ClickException(f"pod {name}: the connector has ended (the HPC job is over); "
                                   f"see: kubectl logs {name} -c {chosen}")
    if "running" not in state:
        why = (state.get("waiting") or {}).get("reason") or "not started"
        raise click.ClickException(f"pod {name}: the connector is not running yet ({why})")
    return chosen


def _kubectl(global_flags: list[str]) -> list[str]:
    found = os.environ.get(KUBECTL_ENV) or shutil.which("kubectl")
    if not found:
        raise click.ClickException(f"kubectl not found on PATH (or set {KUBECTL_ENV})")
    return [found, *global_flags]


def _get_pod(kubectl: list[str], name: str, namespace: str | None) -> dict[str, Any]:
    argv = [*kubectl, "get", "pod", name, "-o", "json", *(["-n", namespace] if namespace else [])]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise click.ClickException(proc.stderr.strip().removeprefix("Error from server ") or "kubectl get pod failed")
    try:
        pod = json.loads(proc.stdout)
    except ValueError:
        raise click.ClickException("kubectl get pod printed no JSON") from None
    if not isinstance(pod, dict):
        raise click.ClickException("kubectl get pod printed no pod")
    return pod


@click.command("shell")
@click.argument("pod")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD…]")
@click.option("-c", "--container", help="The offloaded container (default: the pod's one).")
@click.option("-n", "--namespace", help="Namespace (default: the kubeconfig context's).")
@click.option("--context", help="kubeconfig context to use.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="kubeconfig file to use.")
@click.option("--tty/--no-tty", default=None, help="Allocate a terminal [default: if stdin and stdout are one].")
def shell(pod: str, command: tuple[str, ...], container: str | None, namespace: str | None,
          context: str | None, kubeconfig: str | None, tty: bool | None) -> None:
    """Open a shell (or run CMD) inside POD's running HPC job.

    \b
    kubectl hpc shell train-abc                  # an interactive shell on the job's node
    kubectl hpc shell train-abc -- nvidia-smi    # one command, in the job's allocation
    """
    flags = [*([f"--kubeconfig={kubeconfig}"] if kubeconfig else []), *([f"--context={context}"] if context else [])]
    kubectl = _kubectl(flags)
    found = _get_pod(kubectl, pod, namespace)
    chosen = check_pod(found, pod, container)
    use_tty = sys.stdin.isatty() and sys.stdout.isatty() if tty is None else tty
    argv = exec_argv(kubectl, pod, chosen, connector_python(found, chosen), use_tty, command, namespace)
    sys.stdout.flush()
    os.execv(argv[0], argv)  # noqa: S606 - argv only, no shell; kubectl's exit status is ours
