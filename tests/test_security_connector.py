"""Issue 12, the connector's part: staging, rendering and its own environment against a hostile
pod (or job), tried for real — the real `hpc-connector run` subprocess, the testbed's SLURM and
sshd, jobs that create the bad files as the HPC user. Each test names its item."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from connector.backends.base import JobRequest
from connector.backends.slurm_ssh import SlurmSSHBackend
from connector.profile import Profile
from connector.spec import JobSpec

pytestmark = [pytest.mark.slurm]

BACKENDS = ["slurm-ssh", "slurm-ssh-openssh", "slurm-local"]  # paramiko, OpenSSH client, local
GIB = 1 << 30
LIMIT_KIB = 64 * 1024  # the connector container's memory limit (docs/mutation-contract.md)


def bash_spec(script: str, **extra) -> dict:
    return {"command": ["bash", "-c", script], "runtime": "none", **extra}


def job_dir(run) -> Path:
    """The job directory on the HPC side (the testbed's, on this machine)."""
    return Path(json.loads((run.state_dir / "job.json").read_text())["job_dir"])


# --- memory -----------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Memory(threading.Thread):
    """Sampled every 10 ms while the connector runs: its peak RSS (VmHWM, the high-water mark
    of its own memory since its exec; wait4's ru_maxrss would also count the pytest process it
    was forked from) and the largest sum of the resident memory of it and its descendants
    (its `ssh` processes share the container's limit)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.done = pid, threading.Event()
        self.connector_kib = self.tree_kib = 0

    def run(self) -> None:
        while not self.done.is_set():
            pids, todo = [], [self.pid]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo += _children(pid)
            self.connector_kib = max(self.connector_kib, _status_kib(self.pid, "VmHWM"))
            self.tree_kib = max(self.tree_kib, sum(_status_kib(pid, "VmRSS") for pid in pids))
            time.sleep(0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_staging_a_1gib_file_keeps_the_connector_under_its_memory_limit(backend, profiles, run_connector,
                                                                       tmp_path):
    """Item 12: a 1 GiB file staged in and back out again (sparse here, written in full on the
    HPC side and back in the pod) never becomes the connector's memory: its peak RSS, and that
    of the connector with its `ssh` processes together, stay under the 64 Mi limit (the OpenSSH
    transport used to read the whole file: 48 MiB took it to 111 MiB)."""
    source = tmp_path / "in"
    source.mkdir()
    big = source / "big.bin"
    with open(big, "wb") as handle:
        handle.write(b"head")
        handle.truncate(GIB)
        handle.seek(GIB - 4)
        handle.write(b"tail")
    back = tmp_path / "back"
    spec = bash_spec(f'test "$(stat -c %s input/big.bin)" = {GIB} && head -c 4 input/big.bin'
                     " && tail -c 4 input/big.bin",
                     stage_in=[{"src": str(source), "dst": "input"}],
                     stage_out=[{"src": str(back), "dst": "input"}])
    run = run_connector(spec, profiles[backend])
    memory = Memory(run.proc.pid)
    memory.start()
    try:
        code = run.wait(timeout=900)
        memory.done.set()
        memory.join()
        assert code == 0, run.log
        assert run.stdout.strip() == "headtail"
        copied = back / "big.bin"
        assert copied.stat().st_size == GIB
        with open(copied, "rb") as handle:
            assert handle.read(4) == b"head"
            handle.seek(GIB - 4)
            assert handle.read(4) == b"tail"
        print(f"{backend}: connector peak RSS {memory.connector_kib / 1024:.1f} MiB, "
              f"with its child processes {memory.tree_kib / 1024:.1f} MiB")
        assert 0 < memory.connector_kib < LIMIT_KIB, f"connector peak RSS {memory.connector_kib} KiB"
        assert memory.tree_kib < LIMIT_KIB, f"connector and its child processes: {memory.tree_kib} KiB"
    finally:
        memory.done.set()
        with_state = run.state_dir / "job.json"
        if with_state.exists():
            subprocess.run(["rm", "-rf", "--", str(job_dir(run))], check=False)


# --- stage-out --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_stage_out_of_a_dangling_symlink_fails_naming_it_and_the_pod_ends(backend, profiles, run_connector,
                                                                          tmp_path):
    """Item 13: a dangling symlink among a job's results used to keep the pod Running for ever
    (retried without end). Now the other files are copied, no partial file is left, and the
    connector ends at once with StagingFailed (74) naming the file."""
    results = tmp_path / "results"
    spec = bash_spec("mkdir -p out && echo fine > out/good.txt && ln -s /nonexistent/nothing out/dangling",
                     stage_out=[{"src": str(results), "dst": "out"}])
    run = run_connector(spec, profiles[backend])
    started = time.monotonic()
    assert run.wait(timeout=120) == 74, run.log
    assert time.monotonic() - started < 90
    assert (results / "good.txt").read_text() == "fine\n"
    assert sorted(p.name for p in results.iterdir()) == ["good.txt"]  # no partial file
    term = run.termination
    assert term["reason"] == "StagingFailed", term
    assert "out/dangling" in term["message"] and "No such file" in term["message"], term
    assert "out/dangling" in run.log


@pytest.mark.parametrize("backend", BACKENDS)
def test_stage_out_names_from_a_listing_stay_inside_the_declared_directory(backend, profiles,
                                                                          run_connector, tmp_path):
    """Item 13: the job names a file `a<newline>..`; a line-based listing read it as `a` and
    `..`, and stage-out then walked the job directory into the pod path's parent, writing the
    job's `victim-file` outside the declared directory. Names are now read NUL-separated and
    each must be one plain entry of its directory."""
    pod = tmp_path / "pod"
    results = pod / "results"
    spec = bash_spec("mkdir -p out && echo fine > out/ok.txt && printf inside > \"out/$(printf 'a\\n..')\""
                     " && printf pwned > victim-file",
                     stage_out=[{"src": str(results), "dst": "out"}])
    run = run_connector(spec, profiles[backend])
    assert run.wait(timeout=120) == 0, run.log
    assert sorted(p.name for p in results.iterdir()) == ["a\n..", "ok.txt"]
    assert (results / "a\n..").read_text() == "inside"
    assert not [p for p in tmp_path.rglob("*") if p.name == "victim-file"]
    assert sorted(p.name for p in pod.iterdir()) == ["results"]


# --- item 14: options from the pod ------------------------------------------------------------

def test_openssh_reads_the_host_after_double_dash(testbed_info):
    """Item 14: the OpenSSH transport put the profile host where ssh reads options: a host
    `-V` made every command "succeed" without running (ssh printed its version). With `--`
    before the destination it is a host name that does not resolve."""
    from connector.errors import TransientError
    from connector.transport.openssh import OpenSSHTransport
    from connector.transport.target import SSHTarget
    from testbed import layout

    target = SSHTarget("-V", 2222, layout.TEST_USER, str(layout.CLIENT_KEY), str(layout.KNOWN_HOSTS),
                       connect_timeout=5)
    transport = OpenSSHTransport(target)
    try:
        with pytest.raises(TransientError):
            transport.run(["true"])
    finally:
        transport.close()


def _render(spec: dict) -> str:
    backend = SlurmSSHBackend(Profile(backend="slurm-ssh"))
    job = JobSpec.from_dict({**spec, "pod": {"namespace": "t", "name": "p", "uid": "u-1"}})
    return backend.render(JobRequest(job, "/home/u/hpc-offload/hpco-u-1", {}))


def test_enroot_command_starting_with_a_dash_is_the_command_not_srun_options():
    """Item 14: a pod `command` starting with `-` became `srun` options under enroot (e.g.
    `--container-mounts=/:/host`); it now follows `--`, and the working dir is `=`-joined."""
    spec = {"runtime": "enroot", "image": "nvcr.io/nvidia/pytorch:24.01-py3", "working_dir": "-",
            "command": ["--container-mounts=/:/host", "-x"], "args": ["--help"]}
    line = next(x for x in _render(spec).splitlines() if x.startswith("srun "))
    argv = shlex.split(line)
    argv = argv[:-1] if argv[-1] == "&" else argv  # the payload runs beside the dead man's switch
    cut = argv.index("--")
    assert argv[cut + 1:] == ["--container-mounts=/:/host", "-x", "--help"]
    assert "--container-workdir=-" in argv[:cut]


@pytest.mark.parametrize("backend", ["slurm-ssh-openssh", "slurm-local"])
def test_working_dir_dash_is_a_directory_named_dash(backend, profiles, run_connector, tmp_path):
    """Item 14: `workingDir: "-"` rendered `cd -` (bash: go to $OLDPWD, or fail). It is the
    directory `-` inside the job directory (staged in here)."""
    source = tmp_path / "dash"
    source.mkdir()
    (source / "marker").write_text("staged\n")
    spec = bash_spec('pwd; cat marker', working_dir="-", stage_in=[{"src": str(source), "dst": "-"}])
    run = run_connector(spec, profiles[backend])
    assert run.wait() == 0, run.log
    assert run.stdout == f"{job_dir(run)}/-\nstaged\n"


# --- item 16: $(VAR) --------------------------------------------------------------------------

GREETING = "it's $(touch /tmp/hpco-pwned) `id` \"q\" ${HOME}\nline 2"


@pytest.mark.parametrize("backend", BACKENDS)
def test_references_expand_from_the_job_environment_on_the_hpc_side(backend, profiles, run_connector):
    """Item 16: `$(VAR)` in command/args is expanded as the kubelet expands it (`$$` escapes,
    unknown names stay as written), by the job's shell from the variables the job gets: the
    value is never on a command line or in the script."""
    Path("/tmp/hpco-pwned").unlink(missing_ok=True)
    args = ["$(GREETING)", "$$(GREETING)", "$(UNKNOWN)", "a$$b", "pre-$(GREETING)-post", "$(EMPTY)",
            "$(GREETING", "$(db-password)"]
    spec = {"command": ["printf", "[%s]\\n"], "args": args, "runtime": "none",
            "env_passthrough": ["GREETING", "EMPTY"]}
    run = run_connector(spec, profiles[backend], env={"GREETING": GREETING, "EMPTY": "",
                                                     "db-password": "hunter2"})
    assert run.wait() == 0, run.log
    expected = [GREETING, "$(GREETING)", "$(UNKNOWN)", "a$b", f"pre-{GREETING}-post", "", "$(GREETING",
                "$(db-password)"]
    assert run.stdout == "".join(f"[{value}]\n" for value in expected)
    assert not Path("/tmp/hpco-pwned").exists()
    script = (job_dir(run) / "job.sh").read_text()
    assert "touch /tmp/hpco-pwned" not in script and '"${GREETING}"' in script
    shown = subprocess.run(["scontrol", "show", "job", run.job_id], capture_output=True, text=True).stdout
    assert "hpco-pwned" not in shown and "hunter2" not in shown


def test_references_reach_a_charliecloud_container(profiles, run_connector):
    """Item 16, in a real container runtime: the expanded value is the container's argument."""
    spec = {"command": ["python3", "-c", "import sys; print(repr(sys.argv[1:]))"],
            "args": ["$(GREETING)", "$$(GREETING)"], "image": "python:3.11-slim",
            "env_passthrough": ["GREETING"]}
    run = run_connector(spec, profiles["slurm-ssh-openssh"], env={"GREETING": GREETING})
    assert run.wait() == 0, run.log
    assert run.stdout == f"{[GREETING, '$(GREETING)']!r}\n"


# --- item 3: the pod's env acts on nothing of the connector's ---------------------------------

def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def test_a_pod_path_with_a_fake_ssh_is_not_used(profiles, run_connector, tmp_path):
    """Item 3: a pod `PATH` led the connector to a fake `ssh`; now the connector's own
    environment is a fixed one (the image's PATH, no pod variable), which its `ssh` processes
    inherit, while the job still gets the pod's variables — but none that configures the HPC
    side itself (LD_*, PATH)."""
    from connector.process_env import IMAGE_PATH

    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    marker = tmp_path / "fake-ssh-ran"
    fake = fakebin / "ssh"
    fake.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\nexec /usr/bin/ssh \"$@\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{fakebin}:{os.environ['PATH']}", "SECRET_TOKEN": "s3cr3t-value",
           "LD_LIBRARY_PATH": "/nonexistent/lib", "HTTPS_PROXY": "http://127.0.0.1:9"}
    spec = bash_spec('sleep 3; printf "%s|%s|%s\\n" "${LD_LIBRARY_PATH-unset}" "${#SECRET_TOKEN}" "$PATH"',
                     env_passthrough=["SECRET_TOKEN", "LD_LIBRARY_PATH", "PATH"])
    run = run_connector(spec, profiles["slurm-ssh-openssh"], env=env)
    run.wait_for_stderr("submitted HPC job", timeout=60)
    seen: list[dict[str, str]] = []
    todo = _children(run.proc.pid)
    while todo:
        pid = todo.pop()
        todo += _children(pid)
        try:
            seen.append(_environ_of(pid))
        except OSError:
            continue
    assert run.wait() == 0, run.log
    assert not marker.exists(), "the pod's PATH chose the connector's ssh"
    assert seen, "no child process of the connector to look at"
    for child in seen:
        assert child.get("PATH") == IMAGE_PATH
        assert not {"SECRET_TOKEN", "LD_LIBRARY_PATH", "HTTPS_PROXY"} & set(child)
    ld, length, path = run.stdout.strip().split("|")
    assert (ld, length) == ("unset", str(len("s3cr3t-value")))
    assert str(fakebin) not in path
    assert "LD_LIBRARY_PATH" in run.log and "/nonexistent/lib" not in run.log
