"""`hpc-connector`: runs in the offloaded pod (the paper's mirror job).

\b
In a pod (what the webhook injects):
  hpc-connector run --spec /var/run/hpc-offload/podinfo/job-spec.json \\
                    --profile /var/run/hpc-offload/profile --state-dir /var/run/hpc-offload/state
Paper-compatible form (hpc-connector, 2020; docs/paper-compatibility.md):
  hpc-connector --backend slurm-local --backend-conf '{}' simulate \\
                --job-config '{"script": "#!/bin/bash\\necho hi"}' --monitoring-period 5 --print-logs
  Its arguments may say ${VAR} (expanded from the environment, as the paper's Fig. 3 Job
  writes them); --backend-conf and --job-config take inline JSON or a file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import click

from connector import process_env
from connector.backends.relay import choose_backend
from connector.errors import ConnectorError, InternalError, ProfileError, SpecError
from connector.lifecycle import DEFAULT_SUBMIT_TIMEOUT, DEFAULT_TAIL_INTERVAL, Connector, Timing, read_pod_info
from connector.outcome import termination_path
from connector.paper import DEFAULT_CREDENTIALS, backend_configuration, expand, job_config
from connector.profile import Profile, load_profile_dir, profile_from_values
from connector.readiness import ReadyPort
from connector.shell_cli import shell
from connector.spec import DEFAULT_POLL_INTERVAL, VOLUMES_DIR, JobSpec, PodRef, parse_duration
from connector.state import StateStore

log = logging.getLogger("hpc-connector")


def _setup_logging(level: str) -> None:
    """Connector messages go to stderr (the pod log too); stdout carries only job output."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)sZ hpc-connector %(levelname)s %(message)s",
                                  "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def _fail(exc: ConnectorError, termination_log: str | None) -> None:
    from connector.outcome import Outcome

    Outcome(exc.exit_code, exc.reason, exc.message).write(termination_log)
    click.echo(f"hpc-connector: error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


def _run_connector(spec: JobSpec, profile: Profile, state_dir: str | None,
                   termination_log: str | None, ready_port: int | None = None,
                   part: str | None = None, leader: bool = False, volumes_dir: str = VOLUMES_DIR) -> int:
    environ = click.get_current_context().obj["environ"]  # the container's, not ours
    spec = with_profile_defaults(spec, profile)
    spec.check_runnable()
    if spec.logs == "job-only":  # the container's output is the job's alone: errors only
        log.setLevel(logging.ERROR)
    shared_dir = state_dir
    if spec.whole_pod != bool(part):
        raise SpecError("--part: a whole pod's connector names its container with --part, and only it"
                        if spec.whole_pod else "--part: this job spec is not a whole pod's")
    if part and state_dir:  # one state per container; the pod's shared directory above them
        state_dir = str(Path(state_dir) / f"part-{spec.part(part).name}")
    if state_dir:
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProfileError(f"--state-dir {state_dir} cannot be created: {exc.strerror}") from None
    backend = choose_backend(profile, state_dir, spec)  # direct, or through the relay (docs/relay.md)
    period = spec.poll_interval or profile.monitoring_period or DEFAULT_POLL_INTERVAL
    try:
        tail = float(profile.setting("tail_interval", DEFAULT_TAIL_INTERVAL))
    except (TypeError, ValueError):
        raise ProfileError(f"tail_interval {profile.setting('tail_interval')!r} is not seconds") from None
    try:
        submit_timeout = parse_duration(profile.setting("submit_timeout", DEFAULT_SUBMIT_TIMEOUT),
                                        "submit_timeout")
    except SpecError as exc:
        raise ProfileError(exc.message) from None
    timing = Timing.for_period(period, tail, submit_timeout)
    if part:
        from connector.pod_job import PartConnector

        connector: Connector = PartConnector(
            spec, backend, StateStore(state_dir), timing, sys.stdout.buffer, termination_log,
            environ=environ, err=sys.stderr.buffer, ready=ReadyPort(ready_port), part=part, leader=leader,
            shared_dir=shared_dir, volumes_dir=volumes_dir)
    else:
        from connector.follower import Handoff

        handoff = Handoff.configure(profile.setting("lean_follower", True), state_dir, ready_port, spec.logs,
                                    termination_log)
        if handoff is not None:
            handoff.resume(backend)
        connector = Connector(spec, backend, StateStore(state_dir), timing, sys.stdout.buffer, termination_log,
                              environ=environ, err=sys.stderr.buffer, ready=ReadyPort(ready_port),
                              handoff=handoff)
    connector.install_signal_handlers()
    code = connector.run()
    # The end is reported: a stop arriving now (a whole pod's sidecar is stopped by the kubelet
    # as it ends by itself) must not kill the exit under way. Python restores the default
    # handlers as it shuts down, except an ignored signal's.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    return code


@click.group(invoke_without_command=True, help=__doc__,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--backend", help="Backend type for `simulate` (slurm-ssh, slurm-local, …).")
@click.option("--backend-conf", help="Backend configuration (the profile's `configuration` JSON), "
                                     "inline or a file, for `simulate`.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.pass_context
def cli(ctx: click.Context, backend: str | None, backend_conf: str | None, log_level: str) -> None:
    _setup_logging(log_level)
    # the container's env (main() took it out of ours): data for the job, not our settings
    environ = ctx.obj.get("environ") if isinstance(ctx.obj, dict) else None
    ctx.obj = {"backend": backend, "backend_conf": backend_conf,
               "environ": dict(os.environ) if environ is None else environ}
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command()
@click.option("--spec", "spec_file", required=True, type=click.Path(dir_okay=False),
              help="Job spec JSON (in a pod: the downward-API file of annotation hpc.offload/job-spec).")
@click.option("--profile", "profile_dir", required=True, type=click.Path(file_okay=False),
              help="Backend profile directory: the ConfigMap and Secret projected together.")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Where the job id and log offset are kept, so a restart reattaches.")
@click.option("--pod-info", type=click.Path(file_okay=False),
              help="Directory with pod-uid, pod-name, pod-namespace files [default: the spec's].")
@click.option("--termination-log", default=None,
              help="Where the JSON end report goes [default: /dev/termination-log].")
@click.option("--ready-port", type=click.IntRange(1024, 65535), default=None,
              help="Listen on this TCP port while the HPC job runs (the pod's readiness probe).")
@click.option("--part", default=None, metavar="CONTAINER",
              help="A whole pod (container \"*\"): the container whose part of the job this follows.")
@click.option("--leader", is_flag=True,
              help="A whole pod: this container submits the job (the others find it by its tag).")
@click.option("--volumes-dir", default=VOLUMES_DIR, show_default=True, type=click.Path(file_okay=False),
              help="A whole pod's leader: where the kubelet mounted the pod's ConfigMap, Secret, "
                   "downwardAPI and projected volumes (one directory per volume).")
def run(spec_file: str, profile_dir: str, state_dir: str | None, pod_info: str | None,
        termination_log: str | None, ready_port: int | None, part: str | None, leader: bool,
        volumes_dir: str) -> None:
    """Submit (or reattach to) the HPC job, follow it, mirror its end as the exit code."""
    termination_log = termination_log or termination_path()
    try:
        try:
            text = Path(spec_file).read_text()
        except OSError as exc:
            raise SpecError(f"cannot read the job spec {spec_file}: {exc.strerror}") from None
        spec = JobSpec.from_json(text)
        info = read_pod_info(Path(pod_info) if pod_info else Path(spec_file).parent)
        if info.get("uid") and "pod" in json.loads(text):
            # The pod's identity names its HPC job: only the kubelet (downward API) may say it,
            # never an annotation someone wrote by hand (it would reattach to another pod's job).
            raise SpecError("the job spec may not carry `pod`: a pod's identity comes from the "
                            "downward API (is the hpc.offload/job-spec annotation hand-written?)")
        if info and not spec.pod.uid:
            spec = _with_pod(spec, info)
        profile = load_profile_dir(profile_dir)
        code = _run_connector(spec, profile, state_dir, termination_log, ready_port, part, leader, volumes_dir)
    except ConnectorError as exc:
        _fail(exc, termination_log)
    sys.exit(code)


def with_profile_defaults(spec: JobSpec, profile: Profile) -> JobSpec:
    """The profile fills what the pod and the cluster policy left open (site defaults)."""
    data = spec.to_dict()
    if not spec.runtime and profile.setting("runtime"):
        data["runtime"] = str(profile.setting("runtime")).lower()
    resources = data.setdefault("resources", {})
    # `partition` is SLURM's word for a queue; profiles in the paper's format use it
    for key, setting in (("queue", "queue"), ("queue", "partition"), ("account", "account"), ("qos", "qos")):
        if not resources.get(key) and profile.setting(setting):
            resources[key] = str(profile.setting(setting))
    return JobSpec.from_dict(data)


def _with_pod(spec: JobSpec, info: dict[str, str]) -> JobSpec:
    data = spec.to_dict()
    data["pod"] = PodRef(namespace=info.get("namespace", "default"), name=info.get("name", ""),
                         uid=info.get("uid", "")).__dict__
    return JobSpec.from_dict(data)


@cli.command()
@click.option("--job-config", "job_config_arg", required=True,
              help='JSON {"script": …, "host": …} inline or a file (or a batch script file); '
                   "the script is submitted as written.")
@click.option("--monitoring-period", default="30", show_default=True,
              help="Seconds between scheduler queries (or 30s, 5m).")
@click.option("--print-logs", is_flag=True, help="Print the job output when it ends.")
@click.option("--state-dir", type=click.Path(file_okay=False))
@click.option("--credentials", default=DEFAULT_CREDENTIALS, show_default=True,
              help="Directory with the backend's credential files (ssh-privatekey, known_hosts, "
                   "token, proxy): the mounted profile Secret.")
@click.pass_context
def simulate(ctx: click.Context, job_config_arg: str, monitoring_period: str, print_logs: bool,
             state_dir: str | None, credentials: str) -> None:
    """The paper's mirror job: submit a verbatim script and follow it to its end."""
    termination_log = termination_path()
    try:
        env = ctx.obj["environ"]
        backend = expand(ctx.obj["backend"], env, "--backend")
        if not backend:
            raise SpecError("--backend is required with simulate (e.g. --backend slurm-local)")
        conf = backend_configuration(expand(ctx.obj["backend_conf"], env, "--backend-conf"))
        job = job_config(expand(job_config_arg, env, "--job-config") or "")
        if job.get("host"):
            conf["host"] = job["host"]
        secrets = Path(expand(credentials, env, "--credentials") or DEFAULT_CREDENTIALS)
        # named so a missing key's message says where it was looked for
        profile = profile_from_values(backend, conf, secret_dir=secrets,
                                      name=f"--backend-conf, credentials in {secrets}")
        period = expand(monitoring_period, env, "--monitoring-period") or ""
        spec = JobSpec(script=job["script"], logs="end" if print_logs else "none",
                       poll_interval=parse_duration(period, "--monitoring-period"))
        code = _run_connector(spec, profile, expand(state_dir, env, "--state-dir"), termination_log)
    except ConnectorError as exc:
        _fail(exc, termination_log)
    except Exception as exc:  # a bug: still a readable line and a termination message
        _fail(InternalError(f"unexpected {type(exc).__name__}: {exc}"), termination_log)
    sys.exit(code)


cli.add_command(shell)


def main() -> None:
    """The process entry point: the container's environment leaves ours before anything runs
    (in-process callers such as tests keep theirs)."""
    cli(prog_name="hpc-connector", obj={"environ": process_env.isolate()})


if __name__ == "__main__":
    main()
