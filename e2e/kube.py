"""Shared by the e2e tests and their fixtures: where hpc-offload is installed, and kubectl."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import yaml

from e2e.cluster import ClusterInfo

REPO = Path(__file__).resolve().parent.parent
WEBHOOK_NS = "hpc-offload"
WEBHOOK_DEPLOYMENT = "hpc-offload-webhook"
RESTRICTED_PREFIX = "e2e-restricted-"

POLICY = textwrap.dedent(f"""\
    # e2e: everything allowed except in namespaces {RESTRICTED_PREFIX}*
    unmatched: allow
    rules:
      - name: restricted-short-jobs
        namespaces: ["{RESTRICTED_PREFIX}*"]
        maxTime: "00:10:00"
""")


class Kubectl:
    def __init__(self, cluster: ClusterInfo) -> None:
        self.argv = [str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}"]

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.argv, *args], input=stdin, capture_output=True, text=True, timeout=180)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
        return proc


def apply_profile(kubectl: Kubectl, namespace: str, kind: str, name: str, host: str, **changes: object) -> None:
    """`hpc-offload testbed profile KIND --name NAME --host HOST | kubectl apply`, as users do;
    `changes` are merged into the profile's configuration JSON (e.g. a port nobody answers)."""
    text = subprocess.run(
        ["python3", "-m", "hpc_cli.main", "testbed", "profile", kind, "--name", name, "--host", host],
        cwd=REPO, capture_output=True, text=True, check=True).stdout
    if changes:
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
        for doc in docs:
            if doc["kind"] == "ConfigMap":
                conf = json.loads(doc["data"]["configuration"])
                doc["data"]["configuration"] = json.dumps({**conf, **changes})
        text = yaml.safe_dump_all(docs)
    kubectl("apply", "-n", namespace, "-f", "-", stdin=text)
