"""The README's own commands, run as printed, on the machine the README sets up (issue 14
item 1): last wave its profile line gave pods an unreachable host and no test noticed, because
every test passed --host."""

from __future__ import annotations

import os
import re
import subprocess
import uuid

from kubernetes import client

from e2e.cluster import ClusterInfo
from e2e.kube import REPO
from e2e.test_offload import job_manifest
from e2e.waiting import wait

PROFILE_LINE = re.compile(r"^(hpc-offload testbed profile slurm-ssh --name mysite \| kubectl apply -n research -f -)",
                          re.M)


def test_the_readme_profile_line_gives_pods_a_reachable_site(installed, cluster: ClusterInfo, core, kubectl):
    line = PROFILE_LINE.search((REPO / "README.md").read_text())
    assert line, "README.md no longer has the profile line this test runs"
    namespace = f"research-{uuid.uuid4().hex[:6]}"
    command = line.group(1).replace("-n research", f"-n {namespace}")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
               "PATH": f"{cluster.kubectl.parent}:{os.environ['PATH']}"}
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"profile host {cluster.bridge_gateway}" in done.stderr  # it says which it chose
        manifest = job_manifest("hello", ["python3", "-c", "print('hello from SLURM')"],
                                annotations={"hpc.offload/backend": "mysite"})
        kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)
        batch = client.BatchV1Api(core.api_client)
        wait("the README's Job to complete",
             lambda: (batch.read_namespaced_job_status("hello", namespace).status.succeeded or 0) >= 1,
             timeout=240)
        pod = core.list_namespaced_pod(namespace, label_selector="job-name=hello").items[0]
        assert "hello from SLURM" in core.read_namespaced_pod_log(pod.metadata.name, namespace)
    finally:
        core.delete_namespace(namespace)
