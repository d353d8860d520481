"""The hpc-connector paper's Fig. 2 ConfigMaps and Fig. 3 Job, applied to a real cluster as
published (examples/paper/, adapted only in image, host and the script's payload) with the
one addition hpc-offload needs, the credentials Secret. No webhook is involved: the Job runs
the project image with `args` alone, and the connector expands its `${VAR}` arguments."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.cluster import ClusterInfo
from e2e.waiting import wait

pytestmark = pytest.mark.e2e

PAPER = Path(__file__).resolve().parent.parent / "examples" / "paper"
JOB = "gibi230-segmentation"


def _kubectl(cluster: ClusterInfo, *args: str, stdin: str | None = None) -> str:
    argv = [str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", *args]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
    return proc.stdout


def paper_manifests(host: str, image: str) -> list[dict[str, Any]]:
    """Fig. 2 and Fig. 3 as in examples/paper/, pointed at this cluster's testbed and image."""
    backend, job_config = (d for d in yaml.safe_load_all((PAPER / "fig2-configmaps.yaml").read_text()) if d)
    conf = json.loads(backend["data"]["configuration"])
    backend["data"]["configuration"] = json.dumps({**conf, "host": host})
    job = yaml.safe_load((PAPER / "fig3-job.yaml").read_text())
    job["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return [backend, job_config, job]


def credentials_secret(host: str) -> dict[str, Any]:
    """The Secret Fig. 3's one added volume mounts: the testbed's key and host key."""
    from testbed import profile

    _, secret = profile.files("slurm-ssh", host)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "hpc-backend"}, "stringData": secret}


def test_fig3_job_runs_as_published(cluster: ClusterInfo, project_image: str, namespace: str,
                                    core: client.CoreV1Api) -> None:
    from testbed import api as testbed

    testbed.ensure_up(listen=[cluster.bridge_gateway])
    docs = [*paper_manifests(cluster.bridge_gateway, project_image), credentials_secret(cluster.bridge_gateway)]
    container = docs[2]["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and container["args"][:2] == ["--backend", "${BACKEND_NAME}"]
    _kubectl(cluster, "apply", "-n", namespace, "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))

    batch = client.BatchV1Api(core.api_client)

    def ended() -> str | None:
        status = batch.read_namespaced_job(JOB, namespace).status
        return "Complete" if status.succeeded else "Failed" if status.failed else None

    state = wait("the Fig. 3 Job to end", ended, timeout=240, every=0.5)
    logs = _kubectl(cluster, "logs", "-n", namespace, f"job/{JOB}")
    assert state == "Complete", logs
    match = re.search(r"gibi230: segmenting case NB-0042 as job (\d+) on \S+", logs)
    assert match, logs
    assert "gibi230: segmentation done" in logs
    assert "gibi230: a diagnostic line on stderr" in logs
    assert "${" not in logs  # every reference was expanded

    job_id = match.group(1)
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                           check=True).stdout
    assert re.search(r"JobName=gibi230\s", shown), shown  # the script's own -J, not ours
    assert re.search(r"JobState=COMPLETED\s", shown), shown
    stdout = re.search(r"StdOut=(\S+)", shown).group(1)  # type: ignore[union-attr]
    work_dir = re.search(r"WorkDir=(\S+)", shown).group(1)  # type: ignore[union-attr]
    assert stdout == f"{work_dir}/gibi230_segmentation.out"
    assert "gibi230: segmentation done" in Path(stdout).read_text()
