"""Batch-script rendering: a job spec becomes the script SLURM runs.

Every value that reaches a shell goes through `shlex.quote`; `#SBATCH` lines only carry values
the spec has already restricted to a safe character set. Environment values never appear in
the script: they travel in a separate 0600 env file that the script sources, so a secret in a
pod's env cannot leak through `scontrol show job`, `ps` or a saved script.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from connector.errors import SpecError
from connector.spec import JobSpec

_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+@%,:=~-]+$")


@dataclass(frozen=True)
class JobPaths:
    """Where a job's files live on the HPC side (all inside one job directory)."""

    job_dir: str

    def __post_init__(self) -> None:
        if not _SAFE_PATH.match(self.job_dir):
            raise SpecError(
                f"workdir: {self.job_dir!r} may only contain letters, digits and _ . / + @ % , : = ~ -"
            )

    @property
    def script(self) -> str:
        return f"{self.job_dir}/job.sh"

    @property
    def env_file(self) -> str:
        return f"{self.job_dir}/job.env"

    @property
    def output(self) -> str:
        return f"{self.job_dir}/output.log"

    @property
    def exit_status(self) -> str:
        """Written by a rendered script when its payload ends: lets the connector notice the
        end from a cheap file check instead of asking slurmctld every second."""
        return f"{self.job_dir}/exit-status"


def hpc_image(spec: JobSpec, profile_image: str | None = None) -> str:
    """The image as the runtime names it: annotation, else profile, else the pod's image."""
    if spec.hpc_image:
        return spec.hpc_image
    if profile_image:
        return profile_image
    image = spec.image or ""
    runtime = spec.effective_runtime()
    if runtime in ("singularity", "apptainer"):
        return image if "://" in image or image.startswith("/") else f"docker://{image}"
    if runtime in ("podman", "enroot"):
        return image.removeprefix("docker://")
    return image


def sbatch_directives(spec: JobSpec) -> list[str]:
    """The resource options, as `--opt=value` (values already validated as safe)."""
    slurm = spec.slurm
    options: list[str] = []
    for option, value in (
        ("--partition", slurm.partition),
        ("--account", slurm.account),
        ("--qos", slurm.qos),
        ("--time", slurm.time),
        ("--nodes", slurm.nodes),
        ("--ntasks", slurm.ntasks),
        ("--cpus-per-task", slurm.cpus_per_task),
        ("--mem", slurm.mem),
        ("--gres", slurm.gres),
    ):
        if value is not None:
            options.append(f"{option}={value}")
    options.extend(slurm.extra_args)
    return options


def sbatch_identity_args(spec: JobSpec, paths: JobPaths) -> list[str]:
    """Options the connector always controls, passed on the command line so they also override
    a verbatim script's own `#SBATCH` lines: the name carries the pod UID (for reattach) and
    the output goes where the connector streams it from."""
    comment = f"hpc-offload:{spec.pod.namespace}/{spec.pod.name}" if spec.pod.name else "hpc-offload"
    return [
        f"--job-name={spec.job_name}",
        f"--comment={comment}",
        f"--output={paths.output}",
        f"--error={paths.output}",
        "--open-mode=append",
        f"--chdir={paths.job_dir}",
    ]


def runtime_command(spec: JobSpec, env_names: Iterable[str], profile_image: str | None = None) -> list[str]:
    """The argv that runs the container's command under the chosen runtime."""
    runtime = spec.effective_runtime()
    image = hpc_image(spec, profile_image)
    command, args, workdir = list(spec.command), list(spec.args), spec.working_dir
    names = sorted(set(env_names))
    if runtime in ("singularity", "apptainer"):
        argv = [runtime, "exec" if command else "run"]
        if workdir:
            argv += ["--pwd", workdir]
        return [*argv, image, *command, *args]
    if runtime == "charliecloud":
        argv = ["ch-run"]
        if workdir:
            argv.append(f"--cd={workdir}")
        return [*argv, image, "--", *command, *args]
    if runtime == "podman":
        argv = ["podman", "run", "--rm", "--network=host"]
        for name in names:
            argv += ["--env", name]
        if workdir:
            argv += ["--workdir", workdir]
        if command:
            argv += ["--entrypoint", json.dumps(command)]
        return [*argv, image, *args]
    if runtime == "enroot":
        argv = ["srun", f"--container-image={image}"]
        if names:
            argv.append(f"--container-env={','.join(names)}")
        if workdir:
            argv.append(f"--container-workdir={workdir}")
        if not command:
            argv.append("--container-entrypoint")
        return [*argv, *command, *args]
    if runtime == "none":
        return [*command, *args]
    raise SpecError(f"runtime: {runtime!r} has no renderer")


def render_script(
    spec: JobSpec,
    paths: JobPaths,
    env_names: Iterable[str] = (),
    profile_image: str | None = None,
) -> str:
    """The batch script; a verbatim `script` from the spec is returned as written."""
    if spec.script is not None:
        return spec.script
    spec.check_runnable()
    runtime = spec.effective_runtime()
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {option}" for option in sbatch_directives(spec)]
    who = f"{spec.pod.namespace}/{spec.pod.name}" if spec.pod.name else "a local run"
    lines += [
        f"# Rendered by hpc-offload for {who}; runtime: {runtime}.",
        "# Environment values are in the 0600 env file beside this script, never here.",
        f"if [ -r {shlex.quote(paths.env_file)} ]; then",
        f"  . {shlex.quote(paths.env_file)}",
        "fi",
    ]
    if runtime == "charliecloud":
        lines.append('export USER="${USER:-$(id -un)}"  # ch-run refuses to start without it')
    if runtime == "none" and spec.working_dir:
        lines.append(f"cd {shlex.quote(spec.working_dir)} || exit 1")
    lines += [
        shlex.join(runtime_command(spec, env_names, profile_image)),
        "status=$?",
        f"printf '%s\\n' \"$status\" > {shlex.quote(paths.exit_status)}",
        'exit "$status"',
        "",
    ]
    return "\n".join(lines)


def render_env_file(env: Mapping[str, str]) -> bytes:
    """`export NAME='value'` lines; single quotes keep every byte (newlines, `$()`, quotes)."""
    lines = [f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items())]
    return "".join(lines).encode("utf-8", "surrogateescape")
