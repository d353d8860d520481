"""The manager-neutral part of a batch script: the payload a job runs, whatever runs the job.

A backend adds its own directives (`#SBATCH`, `#$`, …) above these lines
(`render_batch_script`). Every value that reaches a shell goes through `shlex.quote`.
Environment values never appear in a script: a backend hands them to its scheduler out of band
(SLURM: `--export-file` on a file descriptor) or in a 0600 env file that the script sources and
removes at once, so a secret in a pod's env cannot leak through the scheduler, `ps` or a saved
script. A `$(VAR)` in the container's command or args is expanded as the kubelet would, but by
the job's shell: the script says `"${VAR}"`, never the value. Values from the pod that a tool
reads as options (a command starting with `-`, a working dir `-`) follow `--` or `=`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from connector.errors import SpecError
from connector.spec import JobSpec, check_part_name

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
        """The job's stdout (the container's stdout in the pod)."""
        return f"{self.job_dir}/output.log"

    @property
    def error(self) -> str:
        """The job's stderr (the container's stderr in the pod)."""
        return f"{self.job_dir}/error.log"

    @property
    def exit_status(self) -> str:
        """Written by a rendered script when its payload ends: lets the connector notice the
        end from a cheap file check instead of asking slurmctld every second."""
        return f"{self.job_dir}/exit-status"

    @property
    def heartbeat(self) -> str:
        """Refreshed while someone follows the job (the connector, or the relay); it holds the
        seconds after which the job's dead man's switch ends it (`payload_lines`)."""
        return f"{self.job_dir}/heartbeat"

    @property
    def heartbeat_seen(self) -> str:
        """Rewritten by the dead man's switch at each check: the heartbeat is fresh when newer."""
        return f"{self.job_dir}/heartbeat.seen"

    def part_output(self, part: str) -> str:
        """A whole pod's container: its stdout (its own `kubectl logs -c`)."""
        return f"{self.job_dir}/part-{check_part_name(part)}.out"

    def part_error(self, part: str) -> str:
        return f"{self.job_dir}/part-{check_part_name(part)}.err"

    def part_exit(self, part: str) -> str:
        """Written by a whole-pod script when that container's command ends: its exit status."""
        return f"{self.job_dir}/part-{check_part_name(part)}.exit"

    @property
    def volumes(self) -> str:
        """A whole pod's volumes: emptyDirs made by the job, files uploaded by the leader."""
        return f"{self.job_dir}/volumes"

    @property
    def orphaned(self) -> str:
        """Left by the dead man's switch when it ended the payload."""
        return f"{self.job_dir}/orphaned"


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


@dataclass(frozen=True)
class Ref:
    """A reference to a job variable, written `"${NAME}"`: its value stays on the HPC side."""

    name: str


@dataclass(frozen=True)
class Word:
    """One argument that holds references: literal text and `Ref`s, written as one shell word."""

    parts: tuple[str | Ref, ...]

    def prefixed(self, text: str) -> Word:
        return Word((text, *self.parts))

    def shell(self) -> str:
        return "".join(f'"${{{part.name}}}"' if isinstance(part, Ref) else shlex.quote(part)
                       for part in self.parts if part != "")


Arg = str | Word  # one argument of a rendered command line


def expand_references(text: str, names: Iterable[str]) -> Arg:
    """`$(VAR)` as the kubelet expands a container's command and args (expansion.Expand in
    k8s.io/kubernetes/third_party/forked/golang): `$$` is one `$` (so `$$(VAR)` stays
    `$(VAR)`), a reference to a name the job gets becomes a `Ref`, any other (unknown, or not
    forwarded) stays as written. Plain text when nothing refers to a job variable."""
    known = set(names)
    parts: list[str | Ref] = []
    literal: list[str] = []
    i, end = 0, len(text)
    while i < end:
        if text[i] != "$" or i + 1 == end:
            literal.append(text[i])
            i += 1
            continue
        follower = text[i + 1]
        close = text.find(")", i + 2) if follower == "(" else -1
        if follower == "$":
            literal.append("$")
            i += 2
        elif close >= 0 and text[i + 2:close] in known:
            parts += ["".join(literal), Ref(text[i + 2:close])]
            literal = []
            i = close + 1
        elif close >= 0:
            literal.append(text[i:close + 1])
            i = close + 1
        else:  # `$(` never closed, or `$x`: both characters as written
            literal.append(text[i:i + 2])
            i += 2
    rest = "".join(literal)
    return Word((*parts, rest)) if parts else rest


def shell_join(argv: Iterable[Arg]) -> str:
    """A command line: each plain argument quoted, each `Word` written with its references."""
    return " ".join(arg.shell() if isinstance(arg, Word) else shlex.quote(arg) for arg in argv)


def _with(prefix: str, arg: Arg) -> Arg:
    return arg.prefixed(prefix) if isinstance(arg, Word) else prefix + arg


def _directory(path: str) -> str:
    """A working directory no tool reads as anything else: `cd -` is $OLDPWD and `cd dir`
    searches $CDPATH, while `./-` and `./dir` are what they say."""
    return path if path.startswith("/") else f"./{path}"


Bind = tuple[str, str, bool]  # (host path, container path, read-only): a whole pod's volume


def runtime_command(spec: JobSpec, env_names: Iterable[str], profile_image: str | None = None,
                    binds: Sequence[Bind] = ()) -> list[Arg]:
    """The argv that runs the container's command under the chosen runtime (`$(VAR)` in the
    command and args refers to the job's variables `env_names`; join it with `shell_join`).
    `binds` mount a whole pod's volumes, each runtime with its own flag (none for `none`;
    Charliecloud's `-b` has no read-only form)."""
    runtime = spec.effective_runtime()
    image = hpc_image(spec, profile_image)
    names = sorted(set(env_names))
    command = [expand_references(part, names) for part in spec.command]
    args = [expand_references(part, names) for part in spec.args]
    workdir = spec.working_dir
    gpus = bool(spec.resources.gpus)
    if runtime in ("singularity", "apptainer"):
        argv: list[Arg] = [runtime, "exec" if command else "run"]
        if gpus:
            argv.append("--nv")  # the host's NVIDIA driver libraries and devices, inside
        argv += [f"--bind={src}:{dst}{':ro' if ro else ''}" for src, dst, ro in binds]
        if workdir:
            argv.append(f"--pwd={workdir}")
        return [*argv, image, *command, *args]
    if runtime == "charliecloud":
        argv = ["ch-run", *(f"--bind={src}:{dst}" for src, dst, _ in binds)]
        if workdir:
            argv.append(f"--cd={workdir}")
        return [*argv, image, "--", *command, *args]
    if runtime == "podman":
        argv = ["podman", "run", "--rm", "--network=host"]
        if gpus:
            argv.append("--device=nvidia.com/gpu=all")  # CDI: the GPUs the job was given
        for name in names:
            argv += ["--env", name]
        argv += [f"--volume={src}:{dst}{':ro' if ro else ''}" for src, dst, ro in binds]
        if workdir:
            argv.append(f"--workdir={workdir}")
        if command:
            # the entrypoint is the command's first item; the rest go after the image, as
            # Kubernetes' command + args make one argv (podman then ignores the image's CMD)
            head = command[0]
            argv.append(_with("--entrypoint=", head if isinstance(head, Word) else json.dumps([head])))
        return [*argv, image, *command[1:], *args]
    if runtime == "enroot":
        argv = ["srun", f"--container-image={image}"]
        if names:
            argv.append(f"--container-env={','.join(names)}")
        if binds:
            mounts = ",".join(f"{src}:{dst}{':ro' if ro else ''}" for src, dst, ro in binds)
            argv.append(f"--container-mounts={mounts}")
        if workdir:
            argv.append(f"--container-workdir={workdir}")
        if not command:
            argv.append("--container-entrypoint")
        payload = [*command, *args]
        return [*argv, "--", *payload] if payload else argv  # a command `-x` is no srun option
    if runtime == "none":
        return [*command, *args]
    raise SpecError(f"runtime: {runtime!r} has no renderer")


def payload_lines(
    spec: JobSpec,
    paths: JobPaths,
    env_names: Iterable[str] = (),
    profile_image: str | None = None,
    env_file: bool = False,
    launcher: Sequence[str] = (),
) -> list[str]:
    """The script body every manager runs: (source and remove the env file,) run the
    container's command in its runtime — once per task through the manager's `launcher`
    (SLURM: srun) when it asks for several — and leave its exit status beside the output.
    A whole pod (`spec.parts`) gets the whole-pod body (connector/pod_render.py)."""
    if spec.parts:
        from connector.pod_render import pod_payload_lines  # it builds on this module

        return pod_payload_lines(spec, paths, env_names, profile_image, env_file)
    spec.check_runnable()
    runtime = spec.effective_runtime()
    who = f"{spec.pod.namespace}/{spec.pod.name}" if spec.pod.name else "a local run"
    lines = [f"# Rendered by hpc-offload for {who}; runtime: {runtime}."]
    lines += env_preamble(paths, env_file)
    if runtime == "charliecloud":
        lines.append('export USER="${USER:-$(id -un)}"  # ch-run refuses to start without it')
    if runtime == "none" and spec.working_dir:
        lines.append(f"cd -- {shlex.quote(_directory(spec.working_dir))} || exit 1")
    lines += [
        shell_join([*launcher, *runtime_command(spec, env_names, profile_image)]) + " &",
        "hpco_pid=$!",
        *dead_mans_switch(paths),
        'wait "$hpco_pid"',
        "status=$?",
        '[ -n "$hpco_watch" ] && kill "$hpco_watch" 2>/dev/null',
        f"if [ -e {shlex.quote(paths.orphaned)} ]; then status={ORPHANED_EXIT}; fi",
        f"printf '%s\\n' \"$status\" > {shlex.quote(paths.exit_status)}",
        'exit "$status"',
    ]
    return lines


ORPHANED_EXIT = 208  # docs/exit-codes.md: the job's dead man's switch ended it


def dead_mans_switch(paths: JobPaths) -> list[str]:
    """Lines that end the payload (job exit 208) when nobody followed the job for the seconds
    written in its heartbeat file: the connector (direct mode) or the relay refreshes the file
    while its pod exists, so a job cannot outlive its pod for long, even if every cancel was
    lost. No heartbeat file (a backend that writes none): no switch. Three processes when the
    job starts, none after: the check (at most every minute) is bash builtins only — `read -t`
    on a pipe nobody writes to as the clock, `-nt` against a file it rewrites as the memory."""
    beat, seen, orphaned = (shlex.quote(p) for p in (paths.heartbeat, paths.heartbeat_seen, paths.orphaned))
    return [
        f"# Dead man's switch: ends the payload (exit {ORPHANED_EXIT}) once the heartbeat file is stale.",
        "hpco_watch=",
        f"if [ -f {beat} ]; then (",
        "  trap 'exit 0' TERM",
        f'  read -r limit < {beat}; [[ "$limit" =~ ^[0-9]+$ ]] || limit=600',
        "  every=$(( limit / 4 )); (( every > 60 )) && every=60; (( every > 0 )) || every=1",
        "  printf -v now '%(%s)T' -1",
        f'  quiet=$(( now - $(stat -c %Y -- {beat} 2>/dev/null || echo "$now") ))',
        f"  exec 9<> <(:); : > {seen}",
        '  while kill -0 "$hpco_pid" 2>/dev/null; do',
        '    if (( quiet > limit )); then',
        '      echo "hpc-offload: nobody followed this job for ${quiet}s (its pod is gone): ending it" >&2',
        f'      : > {orphaned}; kill -TERM "$hpco_pid"; read -r -t 10 -u 9; kill -KILL "$hpco_pid" 2>/dev/null; exit 0',
        "    fi",
        '    read -r -t "$every" -u 9',
        f"    if [[ {beat} -nt {seen} ]]; then quiet=0; else quiet=$(( quiet + every )); fi",
        f"    : > {seen}",
        "  done",
        ") & hpco_watch=$!; fi",
    ]


def env_preamble(paths: JobPaths, env_file: bool) -> list[str]:
    """Where the job's variables come from: a 0600 env file read and removed at once, or the
    scheduler (never this script)."""
    if not env_file:
        return ["# Environment values reach this job from the scheduler, never from this file."]
    env = shlex.quote(paths.env_file)
    return [
        "# Environment values are in the 0600 env file beside this script, never here;",
        "# it is removed as soon as it is read.",
        f"if [ -r {env} ]; then . {env}; rm -f -- {env}; fi",
    ]


def render_batch_script(directives: Iterable[str], body: Iterable[str]) -> str:
    """`#!/bin/bash`, the manager's directive lines, then the body."""
    return "\n".join(["#!/bin/bash", *directives, *body, ""])


def env_export_file(env: Mapping[str, str]) -> bytes:
    """`NAME=value` entries separated by NUL: sbatch's `--export-file` format, which keeps
    every byte of a value (newlines included) and is never parsed by a shell."""
    return b"".join(f"{name}={value}".encode("utf-8", "surrogateescape") + b"\0"
                    for name, value in sorted(env.items()))


def render_env_file(env: Mapping[str, str]) -> bytes:
    """`export NAME='value'` lines; single quotes keep every byte (newlines, `$()`, quotes)."""
    lines = [f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items())]
    return "".join(lines).encode("utf-8", "surrogateescape")
