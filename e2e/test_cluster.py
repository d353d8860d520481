"""The local cluster behaves like a real one in every way the project relies on."""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from certs.generate import new_ca, new_leaf
from e2e.cluster import ClusterInfo
from e2e.waiting import wait

pytestmark = pytest.mark.e2e


def pod_phase(core: client.CoreV1Api, name: str, ns: str) -> str:
    return core.read_namespaced_pod(name, ns).status.phase


def test_node_ready(core: client.CoreV1Api, local_cluster: ClusterInfo) -> None:
    cluster = local_cluster
    node = core.read_node(cluster.node_name)
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    assert node.status.node_info.kubelet_version == cluster.version
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == cluster.bridge_gateway


def test_pod_runs_project_image_and_log_is_readable(core: client.CoreV1Api, namespace: str, project_image: str) -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="hello"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[
                client.V1Container(
                    name="main",
                    image=project_image,
                    command=["python3", "-c"],
                    args=["import os, webhook, connector; print('hello from', os.getuid())"],
                )
            ],
        ),
    )
    core.create_namespaced_pod(namespace, pod)
    phase = wait(
        "pod end",
        lambda: (p := pod_phase(core, "hello", namespace)) in ("Succeeded", "Failed") and p,
    )
    log = core.read_namespaced_pod_log("hello", namespace)
    assert phase == "Succeeded", log
    assert log.strip() == "hello from 10001"


def test_job_completes(api_client: client.ApiClient, namespace: str, project_image: str) -> None:
    batch = client.BatchV1Api(api_client)
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name="once"),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[
                        client.V1Container(name="main", image=project_image, command=["python3", "-c", "pass"])
                    ],
                )
            ),
        ),
    )
    batch.create_namespaced_job(namespace, job)
    status = wait(
        "job completion",
        lambda: (s := batch.read_namespaced_job_status("once", namespace).status).succeeded and s,
    )
    assert status.succeeded == 1
    assert any(c.type == "Complete" and c.status == "True" for c in status.conditions)


PRESTOP_MAIN = """
import os, signal, sys, time
def on_term(*_):
    seen = os.path.exists('/hook/prestop')
    open('/hook/term', 'w').write(f'prestop-before-term={seen}')
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print('ready', flush=True)
while True:
    time.sleep(0.1)
"""


def test_prestop_hook_runs_on_delete(
    core: client.CoreV1Api, namespace: str, project_image: str, tmp_path: Path
) -> None:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    hook_dir.chmod(0o777)  # the image runs as uid 10001
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="graceful"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            termination_grace_period_seconds=20,
            volumes=[
                client.V1Volume(
                    name="hook",
                    host_path=client.V1HostPathVolumeSource(path=str(hook_dir), type="Directory"),
                )
            ],
            containers=[
                client.V1Container(
                    name="main",
                    image=project_image,
                    command=["python3", "-c", PRESTOP_MAIN],
                    volume_mounts=[client.V1VolumeMount(name="hook", mount_path="/hook")],
                    lifecycle=client.V1Lifecycle(
                        pre_stop=client.V1LifecycleHandler(
                            _exec=client.V1ExecAction(command=["sh", "-c", "echo ran > /hook/prestop"])
                        )
                    ),
                )
            ],
        ),
    )
    core.create_namespaced_pod(namespace, pod)
    wait("pod running", lambda: pod_phase(core, "graceful", namespace) == "Running")
    wait("container ready", lambda: "ready" in core.read_namespaced_pod_log("graceful", namespace))
    core.delete_namespaced_pod("graceful", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("graceful", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait("pod deletion", gone, timeout=60)
    assert (hook_dir / "prestop").read_text().strip() == "ran"
    assert (hook_dir / "term").read_text() == "prestop-before-term=True"


class _Webhook(BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        type(self).calls.append(request["name"] or request["object"]["metadata"].get("name"))
        patch = [{"op": "add", "path": "/metadata/labels", "value": {"e2e-mutated": "yes"}}]
        body = json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": request["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def host_webhook(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """An HTTPS admission webhook on the host's loopback: (url, CA bundle PEM)."""
    ca_crt, ca_key = new_ca("e2e-webhook-ca", days=1)  # the project's own certificate code
    leaf_crt, leaf_key = new_leaf(ca_crt, ca_key, dns=["e2e-webhook.local"], ips=["127.0.0.1"], days=1)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(leaf_crt)
    key.write_bytes(leaf_key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    _Webhook.calls = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/mutate", ca_crt
    server.shutdown()
    server.server_close()


def test_mutating_webhook_on_host_is_called_and_patch_applied(
    local_cluster: ClusterInfo,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    host_webhook: tuple[str, bytes],
) -> None:
    url, ca = host_webhook
    adm = client.AdmissionregistrationV1Api(api_client)
    name = f"{namespace}-mutator"
    config = client.V1MutatingWebhookConfiguration(
        metadata=client.V1ObjectMeta(name=name),
        webhooks=[
            client.V1MutatingWebhook(
                name="e2e.hpc.offload",
                client_config=client.AdmissionregistrationV1WebhookClientConfig(
                    url=url, ca_bundle=base64.b64encode(ca).decode()
                ),
                rules=[
                    client.V1RuleWithOperations(
                        api_groups=[""],
                        api_versions=["v1"],
                        operations=["CREATE"],
                        resources=["pods"],
                    )
                ],
                namespace_selector=client.V1LabelSelector(match_labels={"kubernetes.io/metadata.name": namespace}),
                match_conditions=[
                    client.V1MatchCondition(
                        name="annotated",
                        expression="has(object.metadata.annotations) && "
                        "'hpc.offload/backend' in object.metadata.annotations",
                    )
                ],
                failure_policy="Fail",
                side_effects="None",
                admission_review_versions=["v1"],
                timeout_seconds=5,
            )
        ],
    )
    adm.create_mutating_webhook_configuration(config)
    try:

        def pod(pod_name: str, annotated: bool) -> client.V1Pod:
            annotations = {"hpc.offload/backend": "e2e"} if annotated else None
            return client.V1Pod(
                metadata=client.V1ObjectMeta(name=pod_name, annotations=annotations),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="hpc-offload:dev")]),
            )

        # the API server picks new webhook configurations up asynchronously: retry (dry run)
        def mutated() -> dict[str, str] | None:
            created = core.create_namespaced_pod(namespace, pod("probe", True), dry_run="All")
            return created.metadata.labels

        assert wait("webhook in effect", mutated, timeout=30) == {"e2e-mutated": "yes"}
        created = core.create_namespaced_pod(namespace, pod("annotated", True))
        assert created.metadata.labels == {"e2e-mutated": "yes"}
        assert "annotated" in _Webhook.calls
        plain = core.create_namespaced_pod(namespace, pod("plain", False))
        assert not plain.metadata.labels
        assert "plain" not in _Webhook.calls
    finally:
        adm.delete_mutating_webhook_configuration(name)
