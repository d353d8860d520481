"""`kubectl hpc jobs` (also `hpc-offload jobs`): offloaded pods with their HPC job, state,
reason and queue position.

The connector has no API access (paper requirement R4), so it records nothing in the API
server. Everything here comes from what Kubernetes already keeps (docs/kubectl-hpc.md):

- a terminated connector: its termination message, JSON `{jobId, state, exitCode, reason,
  message}` (connector/outcome.py);
- a running one: its log, where the connector writes one versioned, machine-readable record
  per state change (`hpc-offload-state: {"v": 1, "job": …, "state": …}`, connector/record.py).
  The last ~200 lines give the latest record; when job output has pushed it out of them, the
  head of the log (where the first records always are) gives the job id and the state then.

The parsing and formatting below work on plain (camelCase) dicts, as `kubectl get -o json`
prints them; only `jobs()` talks to the API server.
"""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import click

from connector import record

BACKEND = "hpc.offload/backend"
CONTAINER = "hpc.offload/container"
JOB_SPEC = "hpc.offload/job-spec"
STATUS = "hpc.offload/status"
INJECTED = "injected"
TAIL_LINES = 200
HEAD_BYTES = 16384
NONE = "-"

LogReader = Callable[[str, str, str, bool], str]  # (namespace, pod, container, head) -> text


@dataclass(frozen=True)
class JobRow:
    """One offloaded pod as listed."""

    namespace: str
    pod: str
    profile: str
    job_id: str | None
    state: str | None
    phase: str
    age: str
    container: str | None = None
    exit_code: int | None = None  # the connector's, once it ended
    reason: str | None = None
    position: int | None = None  # place in the HPC queue while pending
    source: str | None = None  # where id/state came from: termination-message, record, None

    def to_json(self) -> dict[str, Any]:
        """camelCase keys, as in the termination message."""
        return {"namespace": self.namespace, "pod": self.pod, "profile": self.profile,
                "jobId": self.job_id, "state": self.state, "phase": self.phase,
                "age": self.age, "container": self.container, "exitCode": self.exit_code,
                "reason": self.reason, "position": self.position, "source": self.source}


def is_offloaded(pod: Mapping[str, Any]) -> bool:
    """The webhook marked the pod (`hpc.offload/status: injected`)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return annotations.get(STATUS) == INJECTED


def offloaded_container(pod: Mapping[str, Any]) -> str | None:
    """The connector's container: the job spec's, else `hpc.offload/container`, else the only one."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    try:
        spec = json.loads(annotations.get(JOB_SPEC) or "{}")
        name = spec.get("container")
        if name == "*":  # a whole pod (docs/whole-pods.md): its first app container shows the job
            name = next((part.get("name") for part in spec.get("parts") or []
                         if isinstance(part, dict) and part.get("kind", "app") == "app"), None)
    except (ValueError, AttributeError):
        name = None
    if isinstance(name, str) and name:
        return name
    if annotations.get(CONTAINER):
        return str(annotations[CONTAINER])
    containers = (pod.get("spec") or {}).get("containers") or []
    return str(containers[0].get("name")) if len(containers) == 1 else None


def container_status(pod: Mapping[str, Any], name: str | None) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == name:
            return status  # type: ignore[no-any-return]
    return None


def parse_termination(message: str | None) -> dict[str, Any] | None:
    """The connector's JSON termination message; None when it is not one.

    With `FallbackToLogsOnError` a connector that died before writing it leaves its log tail
    there instead.
    """
    if not message:
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("exitCode"), int):
        return None
    return data


def last_record(text: str) -> dict[str, Any] | None:
    """The connector's newest state record in a log text (connector/record.py), or None."""
    return record.last(text)


def human_age(created: str | None, now: dt.datetime) -> str:
    """kubectl's compact age: 45s, 7m30s, 95m, 5h12m, 20h, 3d4h, 40d, 2y."""
    if not created:
        return NONE
    try:
        then = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return NONE
    s = max(0, int((now - then).total_seconds()))
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 192:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 730:
        return f"{d}d"
    return f"{d // 365}y"


def pod_phase(pod: Mapping[str, Any]) -> str:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    return str((pod.get("status") or {}).get("phase") or "Unknown")


def row_for(pod: Mapping[str, Any], read_log: LogReader | None, now: dt.datetime) -> JobRow:
    """One row; `read_log` is called only for a running (or message-less ended) connector."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
    container = offloaded_container(pod)
    current = (container_status(pod, container) or {}).get("state") or {}
    terminated = current.get("terminated")  # {} would still mean ended
    common: dict[str, Any] = {
        "namespace": namespace, "pod": name, "profile": str(annotations.get(BACKEND) or NONE),
        "phase": pod_phase(pod), "age": human_age(metadata.get("creationTimestamp"), now),
        "container": container}
    if terminated is not None:
        data = parse_termination(terminated.get("message"))
        if data is not None:
            job_id = data.get("jobId")
            # no state: the job never ran (bad spec, profile, host key); the reason says why
            return JobRow(**common, job_id=str(job_id) if job_id is not None else None,
                          state=str(data.get("state") or data.get("reason") or "") or None,
                          exit_code=data["exitCode"], reason=data.get("reason"),
                          source="termination-message")
    if not container or read_log is None or not ("running" in current or terminated is not None):
        return JobRow(**common, job_id=None, state=None)  # not started: nothing submitted
    found = _record_from_logs(read_log, namespace, name, container)
    if found is None:
        return JobRow(**common, job_id=None, state="?")  # the log could not be read
    job_id, state = _text(found.get("job")), _text(found.get("state"))
    reason, position = _text(found.get("reason")), found.get("position")
    exit_code = found.get("exit") if isinstance(found.get("exit"), int) else None
    if terminated is not None:  # the connector ended without its message (killed, OOM): say so
        exit_code, reason = terminated.get("exitCode"), terminated.get("reason")
        state = f"unknown (connector {reason or 'exited'} {exit_code})"
    return JobRow(**common, job_id=job_id, state=state, exit_code=exit_code, reason=reason,
                  position=position if isinstance(position, int) and state == "PENDING" else None,
                  source="record" if found else None)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _record_from_logs(read_log: LogReader, namespace: str, pod: str,
                      container: str) -> dict[str, Any] | None:
    """The newest record: from the log's tail, else from its head; {} when there is none yet,
    None when the log cannot be read."""
    try:
        found = last_record(read_log(namespace, pod, container, False))
        if found is None:  # output pushed the records out of the tail: the first ones head the log
            found = last_record(read_log(namespace, pod, container, True))
    except Exception:  # a log we may not read must not break the listing
        return None
    return found or {}


def rows_for(pods: Iterable[Mapping[str, Any]], read_log: LogReader | None,
             now: dt.datetime | None = None, parallel: int = 8) -> list[JobRow]:
    """Rows for the offloaded pods among `pods`, sorted by namespace and name."""
    now = now or dt.datetime.now(dt.UTC)
    chosen = sorted((p for p in pods if is_offloaded(p)),
                    key=lambda p: ((p.get("metadata") or {}).get("namespace") or "",
                                   (p.get("metadata") or {}).get("name") or ""))
    if parallel <= 1 or len(chosen) <= 1:
        return [row_for(p, read_log, now) for p in chosen]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda p: row_for(p, read_log, now), chosen))


COLUMNS = (("NAMESPACE", "namespace"), ("POD", "pod"), ("PROFILE", "profile"),
           ("HPC-JOB", "job_id"), ("HPC-STATE", "state"), ("REASON", "reason"), ("QUEUE", "position"),
           ("PHASE", "phase"), ("AGE", "age"))


def printable(text: str) -> str:
    """`text` safe for a terminal: control and format characters (escape sequences, carriage
    returns, bidi overrides) shown as `\\xNN`/`\\uNNNN`. Profile names, job ids and states
    come from tenants' annotations, logs and termination messages (issue 12, item 5)."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() and unicodedata.category(char) not in ("Cf", "Zl", "Zp"):
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return "".join(out)


def format_table(rows: list[JobRow]) -> str:
    """kubectl-style columns, left-aligned, three spaces apart; every cell printable."""
    table = [[title for title, _ in COLUMNS]]
    table += [[printable(str(getattr(row, key) or NONE)) for _, key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "".join("   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                   .rstrip() + "\n" for line in table)


def format_json(rows: list[JobRow]) -> str:
    """JSON escapes every control and non-ASCII character itself."""
    return json.dumps([row.to_json() for row in rows], indent=2, ensure_ascii=True) + "\n"


def _current_namespace(kubeconfig: str | None) -> str:
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        return str((active or {}).get("context", {}).get("namespace") or "default")
    except (config.ConfigException, OSError):
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as handle:
                return handle.read().strip() or "default"
        except OSError:
            return "default"


@click.command("jobs")
@click.option("-n", "--namespace", help="Namespace (default: the kubeconfig context's).")
@click.option("-A", "--all-namespaces", is_flag=True, help="List across all namespaces.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, exists=True),
              help="Default: $KUBECONFIG, ~/.kube/config, else in-cluster.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
def jobs(namespace: str | None, all_namespaces: bool, kubeconfig: str | None,
         output: str) -> None:
    """List offloaded pods with their HPC job, state, reason and queue position.

    They come from the connector's termination message once it ended, and from the state
    records in its log while it runs (the connector has no API access): reading them needs
    `list` on pods and `get` on pods/log.
    """
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    if namespace and all_namespaces:
        raise click.UsageError("use -n NAMESPACE or -A, not both")
    try:
        try:
            config.load_kube_config(config_file=kubeconfig)
        except (config.ConfigException, OSError):
            if kubeconfig:
                raise
            config.load_incluster_config()
    except (config.ConfigException, OSError) as exc:
        raise click.ClickException(f"no usable kubeconfig: {exc}") from None
    api = client.ApiClient()
    core = client.CoreV1Api(api)

    def read_log(ns: str, pod: str, container: str, head: bool) -> str:
        if head:
            return str(core.read_namespaced_pod_log(pod, ns, container=container,
                                                    limit_bytes=HEAD_BYTES))
        return str(core.read_namespaced_pod_log(pod, ns, container=container,
                                                tail_lines=TAIL_LINES))

    try:
        if all_namespaces:
            listed = core.list_pod_for_all_namespaces()
        else:
            listed = core.list_namespaced_pod(namespace or _current_namespace(kubeconfig))
    except ApiException as exc:
        raise click.ClickException(printable(f"Kubernetes API: {exc.status} {exc.reason}")) \
            from None
    pods = api.sanitize_for_serialization(listed).get("items") or []
    rows = rows_for(pods, read_log)
    if output == "json":
        click.echo(format_json(rows), nl=False)
    elif rows:
        click.echo(format_table(rows), nl=False)
    else:
        where = "any namespace" if all_namespaces else "this namespace"
        click.echo(f"No offloaded pods in {where}.", err=True)
