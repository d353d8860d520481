"""`hpc-offload render` (also `kubectl hpc render`): the webhook's mutation, offline.

Reads manifests, prints them as admission would leave them (or, with --script, the batch
scripts the connector would submit), so a user can review the result or debug a denial
without a cluster. A denial exits non-zero with the webhook's own message.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import yaml

from webhook.config import ConfigError, WebhookConfig, load_config
from webhook.manifests import (
    ManifestDenied,
    OffloadedPod,
    misplaced_annotations,
    mutate_manifest,
    script_for,
)
from webhook.mutation import read_job_spec
from webhook.policy import Policy, PolicyError


class _Dumper(yaml.SafeDumper):
    """Block style, key order kept, multi-line strings (scripts) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump_yaml(documents: list[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True, width=100)


def load_documents(text: str, source: str) -> list[Any]:
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{source}: not valid YAML: {exc}") from None


def render_documents(
    documents: list[Any], namespace: str, config: WebhookConfig, policy: Policy | None
) -> tuple[list[Any], list[OffloadedPod]]:
    """Every document mutated as the webhook would (the same `mutate()` on the pod)."""
    rendered: list[Any] = []
    offloaded: list[OffloadedPod] = []
    for document in documents:
        result, pods = mutate_manifest(document, namespace, config, policy)
        rendered.append(result)
        offloaded += pods
    return rendered, offloaded


def render_scripts(offloaded: list[OffloadedPod]) -> str:
    """The scripts; each named by a comment line when there are several."""
    if len(offloaded) == 1:
        return script_for(offloaded[0])
    parts = []
    for pod in offloaded:
        spec = read_job_spec(pod.pod)
        container = spec.container if spec is not None else "?"
        parts.append(f"# ---- {pod.where}, container {container}\n{script_for(pod)}")
    return "\n".join(parts)


@click.command("render")
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE",
              help="Manifest file (multi-document YAML or JSON); '-' reads stdin. Repeatable.")
@click.option("-n", "--namespace", default="default", show_default=True,
              help="Namespace for manifests that do not name one (policy rules match it).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Webhook config file (connector image, resources…).")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False),
              help="Cluster policy file to apply, as the webhook would.")
@click.option("--script", is_flag=True,
              help="Print the batch scripts the connector would submit instead of manifests.")
def render(files: tuple[str, ...], namespace: str, config_path: str | None,
           policy_path: str | None, script: bool) -> None:
    """Print manifests as the hpc-offload webhook would mutate them.

    Pods, Jobs, CronJobs, Deployments, StatefulSets, DaemonSets and ReplicaSets have their pod
    (template) mutated; other objects pass through unchanged.
    """
    try:
        config = load_config(config_path)
        policy = Policy.load(policy_path) if policy_path else None
    except (ConfigError, PolicyError) as exc:
        raise click.ClickException(str(exc)) from None
    documents: list[Any] = []
    for name in files:
        with click.open_file(name, "r", encoding="utf-8") as handle:
            documents += load_documents(handle.read(), "stdin" if name == "-" else name)
    for document in documents:
        for warning in misplaced_annotations(document):
            click.echo(f"warning: {warning}", err=True)
    try:
        rendered, offloaded = render_documents(documents, namespace, config, policy)
    except ManifestDenied as exc:
        raise click.ClickException(
            f"{exc.where} would be denied ({exc.denial.code}): {exc.denial.message}") from None
    if script:
        if not offloaded:
            raise click.ClickException("no offloaded pod: nothing carries hpc.offload/backend")
        sys.stdout.write(render_scripts(offloaded))
    else:
        sys.stdout.write(dump_yaml(rendered))
