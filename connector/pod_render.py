"""The body of a whole pod's batch script: every container of the pod in one HPC job.

Kubernetes' order (docs/whole-pods.md): init containers one after the other, each to
completion, a failing one ending the pod with its code; native sidecars (init containers with
restartPolicy Always) started in their place and stopped with SIGTERM, last first, after the
app containers; app containers concurrently. Each container ("part") writes its stdout and
stderr to part-NAME.out/.err and its exit status to part-NAME.exit the moment it ends, so the
connector named after it follows it alone.

Volumes live under the job directory's volumes/: emptyDirs are made here, ConfigMap, Secret,
downwardAPI and projected volumes were uploaded there (0600) by the leader connector before
the submission. Each is bound at its mount paths by the runtime's own flag and the whole
directory is removed when the job ends, as Kubernetes removes a pod's volumes.

Environment: the job gets part i's variables as HPCO_P<i>_<NAME> (from the scheduler or the
0600 env file, never from this script); a part's function exports its own under their own
names and unsets every part's, so no container sees another's variables.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence

from connector.errors import SpecError
from connector.render import (
    ORPHANED_EXIT,
    Bind,
    JobPaths,
    _directory,
    dead_mans_switch,
    env_preamble,
    runtime_command,
    shell_join,
)
from connector.spec import JobSpec, Part

_JOB_ENV = re.compile(r"HPCO_P(\d+)_([A-Za-z_][A-Za-z0-9_]*)")
SIDECAR_STOP_SIGNAL = "TERM"


def job_env_name(index: int, name: str) -> str:
    """Part `index`'s variable `name` as the job carries it."""
    return f"HPCO_P{index}_{name}"


def part_env_names(env_names: Iterable[str], index: int) -> list[str]:
    """The names (as the part sees them) of the job variables that belong to part `index`."""
    own = []
    for name in env_names:
        match = _JOB_ENV.fullmatch(name)
        if match and int(match.group(1)) == index:
            own.append(match.group(2))
    return sorted(own)


def volume_env_name(volume: str) -> str:
    """Runtime `none` binds nothing: a part finds volume `volume` at this variable's path."""
    return "HPCO_VOLUME_" + volume.upper().replace("-", "_")


def part_binds(spec: JobSpec, part: Part, paths: JobPaths) -> list[Bind]:
    """The part's volumeMounts as (job-side path, mount path, read-only): ConfigMap, Secret,
    downwardAPI and projected volumes are always read-only, as the kubelet mounts them."""
    kinds = {volume.name: volume.kind for volume in spec.volumes}
    binds = []
    for mount in part.mounts:
        source = f"{paths.volumes}/{mount.volume}" + (f"/{mount.sub_path}" if mount.sub_path else "")
        binds.append((source, mount.path, mount.read_only or kinds[mount.volume] == "files"))
    return binds


def _part_function(spec: JobSpec, index: int, part: Part, paths: JobPaths, env_names: Sequence[str],
                   profile_image: str | None) -> list[str]:
    """`hpco_part_<i>`: the part's own variables, then exec its runtime (run in a subshell)."""
    single = spec.part_spec(part.name)
    runtime = single.effective_runtime()
    own = part_env_names(env_names, index)
    lines = [f"hpco_part_{index}() {{  # {part.kind} container {part.name}"]
    lines += [f'  export {name}="${{{job_env_name(index, name)}}}"' for name in own]
    every = sorted(name for name in env_names if _JOB_ENV.fullmatch(name))
    if every:
        lines.append(f"  unset {' '.join(every)}")
    binds = part_binds(spec, part, paths)
    if runtime == "none":
        for volume in dict.fromkeys(mount.volume for mount in part.mounts):
            where = shlex.quote(f"{paths.volumes}/{volume}")
            lines.append(f"  export {volume_env_name(volume)}={where}  # runtime none binds nothing")
        if part.working_dir:
            lines.append(f"  cd -- {shlex.quote(_directory(part.working_dir))} || exit 1")
    argv = runtime_command(single, own, profile_image, () if runtime == "none" else binds)
    if runtime == "enroot":
        argv.insert(1, "--overlap")  # the app containers' steps share the allocation
    if runtime == "charliecloud":
        lines.append(f'  exec -- ch-run "${{hpco_ch[@]}}" {shell_join(argv[1:])}')
    else:
        lines.append(f"  exec -- {shell_join(argv)}")
    lines.append("}")
    return lines


HELPERS = [
    "hpco_wait() {  # the exit status of $1, however often a trapped signal cuts the wait short",
    "  local s t",
    '  while :; do wait "$1"; s=$?; kill -0 "$1" 2>/dev/null || break; done',
    '  if [ "$s" -gt 128 ]; then wait "$1" 2>/dev/null; t=$?; [ "$t" = 127 ] || s=$t; fi',
    '  return "$s"',
    "}",
    "hpco_run() {  # NAME FUNCTION: one container in the background, its output in its own files",
    "  (  # and its exit status in part-NAME.exit the moment it ends",
    "    p=",
    '    trap \'[ -n "$p" ] && kill -TERM "$p" 2>/dev/null\' TERM',
    '    "$2" >> "$hpco_dir/part-$1.out" 2>> "$hpco_dir/part-$1.err" &',
    "    p=$!",
    '    hpco_wait "$p"; s=$?',
    "    printf '%s\\n' \"$s\" > \"$hpco_dir/part-$1.exit\"",
    '    exit "$s"',
    "  ) &",
    "  hpco_last=$!",
    '  hpco_live="$hpco_live $hpco_last"',
    "}",
    "hpco_stop() {  # the started sidecars: SIGTERM, last started first, each waited for",
    "  local p",
    f'  for p in $hpco_sidecars; do kill -{SIDECAR_STOP_SIGNAL} "$p" 2>/dev/null; hpco_wait "$p"; done',
    "}",
]


def _runner(spec: JobSpec) -> list[str]:
    """`hpco_pod`: the parts in Kubernetes' order; returns the pod's code (the failing init
    container's, else the first failing app container's in pod order, else 0)."""
    lines = [
        "hpco_pod() {  # the pod's containers as Kubernetes runs them",
        "  local s code=0 p",
        "  hpco_live= hpco_sidecars= hpco_apps= hpco_stopping=",
        "  trap 'hpco_stopping=1; kill -TERM $hpco_live 2>/dev/null' TERM",
    ]
    for index, part in enumerate(spec.parts):
        if part.kind == "init":
            lines += [
                f"  # init container {part.name}: to completion; a failure ends the pod with its code",
                f"  hpco_run {part.name} hpco_part_{index}",
                '  hpco_wait "$hpco_last"; s=$?',
                '  if [ "$s" -ne 0 ] || [ -n "$hpco_stopping" ]; then hpco_stop; return $(( s ? s : 143 )); fi',
            ]
        elif part.kind == "sidecar":
            lines += [
                f"  # native sidecar {part.name}: runs beside what follows, stopped after the app containers",
                f"  hpco_run {part.name} hpco_part_{index}",
                '  hpco_sidecars="$hpco_last $hpco_sidecars"',
            ]
    lines += [
        '  if [ -n "$hpco_stopping" ]; then hpco_stop; return 143; fi',
        "  # the app containers, concurrently",
    ]
    for index, part in enumerate(spec.parts):
        if part.kind == "app":
            lines += [f"  hpco_run {part.name} hpco_part_{index}", '  hpco_apps="$hpco_apps $hpco_last"']
    lines += [
        '  for p in $hpco_apps; do hpco_wait "$p"; s=$?; [ "$code" -ne 0 ] || code=$s; done',
        "  hpco_stop",
        '  return "$code"',
        "}",
    ]
    return lines


def pod_payload_lines(spec: JobSpec, paths: JobPaths, env_names: Iterable[str] = (),
                      profile_image: str | None = None, env_file: bool = False) -> list[str]:
    """The whole-pod script body (the same for every manager; directives go above it)."""
    spec.check_runnable()
    names = sorted(set(env_names))
    runtime = spec.effective_runtime()
    if any(c in paths.job_dir for c in ":,") and spec.volumes and runtime != "none":
        raise SpecError(f"workdir: {paths.job_dir!r} holds ':' or ',', which the runtime's bind "
                        "flag splits on; a whole pod with volumes needs a job directory without them")
    who = f"{spec.pod.namespace}/{spec.pod.name}" if spec.pod.name else "a local run"
    lines = [f"# Rendered by hpc-offload for {who}: the whole pod ({len(spec.parts)} containers) "
             f"as one job; runtime: {runtime}."]
    lines += env_preamble(paths, env_file)
    lines.append(f"hpco_dir={shlex.quote(paths.job_dir)}")
    if runtime == "charliecloud":
        lines += [
            'export USER="${USER:-$(id -un)}"  # ch-run refuses to start without it',
            "# ch-run makes a missing mount point only over a writeable overlay (--write-fake);",
            "# without one (Charliecloud before 0.33) the mount paths must exist in the image",
            "hpco_ch=(); ch-run --feature=overlayfs 2>/dev/null && hpco_ch=(--write-fake)",
        ]
    empty = [v.name for v in spec.volumes if v.kind == "emptyDir"]
    if spec.volumes:
        lines.append("# Volumes: emptyDirs are made here; the others were uploaded (0600) before submission.")
    if empty:
        dirs = " ".join(f'"$hpco_dir/volumes/{name}"' for name in empty)
        lines.append(f"mkdir -p -m 700 -- {dirs} || exit 1")
    subdirs = sorted({f"{mount.volume}/{mount.sub_path}" for part in spec.parts for mount in part.mounts
                      if mount.sub_path and mount.volume in empty})
    if subdirs:
        quoted = " ".join(f'"$hpco_dir/volumes/"{shlex.quote(path)}' for path in subdirs)
        lines.append(f"mkdir -p -- {quoted} || exit 1")
    lines.append("# Each container: its own variables, volumes, image and command.")
    for index, part in enumerate(spec.parts):
        lines += _part_function(spec, index, part, paths, names, profile_image)
    lines += HELPERS
    lines += _runner(spec)
    lines += [
        "hpco_pod &",
        "hpco_pid=$!",
        *dead_mans_switch(paths),
        "trap 'kill -TERM \"$hpco_pid\" 2>/dev/null' TERM",
        'hpco_wait "$hpco_pid"',
        "status=$?",
        '[ -n "$hpco_watch" ] && kill "$hpco_watch" 2>/dev/null',
        '# the pod is gone: so are its volumes (and the copies of its ConfigMaps and Secrets)',
        'rm -rf -- "$hpco_dir/volumes"',
        f"if [ -e {shlex.quote(paths.orphaned)} ]; then status={ORPHANED_EXIT}; fi",
        f"printf '%s\\n' \"$status\" > {shlex.quote(paths.exit_status)}",
        'exit "$status"',
    ]
    return lines


def pod_env_names(spec: JobSpec) -> list[str]:
    """The job variables of the names the pod's containers list (their envFrom adds more at
    run time): what `hpc-offload render --scripts` shows."""
    return [job_env_name(i, name) for i, part in enumerate(spec.parts) for name in part.env_passthrough]
