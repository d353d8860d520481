"""The part every manager driven by command-line tools shares (SLURM, Grid Engine, …): a
transport to the HPC side (SSH, or this machine) for its commands, and files read and written
through it — the output, the end marker, staging. A subclass adds only its scheduler's
commands and its directives.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from typing import ClassVar

from connector.backends.base import Backend, Capability, FileStore, JobHandle, Progress
from connector.errors import BackendError, ConnectorError, ProfileError, SpecError, TransientError
from connector.render import JobPaths
from connector.transport.base import READ_LIMIT, CommandResult, Transport

DEFAULT_ORPHAN_TIMEOUT = 600  # seconds: profile `orphan_timeout` (0: no dead man's switch)


class ShellBackend(Backend):
    """A manager whose commands run in a shell on a login node (or here)."""

    access: ClassVar[str] = "ssh"  # "ssh": the profile's login node; "local": this machine
    # PARTS: the shared renderer's whole-pod script, and a part's files read like the job's
    capabilities = Capability.STREAM_OUTPUT | Capability.FINAL_OUTPUT | Capability.FILES | Capability.PARTS

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._transport: Transport | None = None
        self._beaten = float("-inf")  # the last heartbeat refresh: the first progress refreshes it

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = self.make_transport()
        return self._transport

    def make_transport(self) -> Transport:
        if self.access == "local":
            from connector.transport.local import LocalTransport

            return LocalTransport()
        return ssh_transport(self.profile, self.type_name, self.runtime_dir)

    def workdir(self) -> str:
        """Profile `workdir`, relative to the HPC user's home unless absolute."""
        configured = str(self.profile.setting("workdir", "hpc-offload"))
        if configured.startswith("/"):
            return configured.rstrip("/")
        return f"{self.transport.home().rstrip('/')}/{configured.strip('/')}"

    def orphan_timeout(self) -> int:
        """Seconds nobody may follow a job before its dead man's switch ends it (0: never)."""
        from connector.spec import parse_duration

        value = self.profile.setting("orphan_timeout", DEFAULT_ORPHAN_TIMEOUT)
        try:
            return int(parse_duration(value, "orphan_timeout"))
        except SpecError as exc:
            raise ProfileError(f"profile {self.profile.name!r}: {exc.message}") from None

    def prepare_job_dir(self, job_dir: str, *stale: str) -> None:
        """The job directory (0700), no file left in it by an earlier run (end marker), and
        a fresh heartbeat file holding the orphan timeout (the job's dead man's switch)."""
        script = ('d=$1; t=$2; shift 2; mkdir -p -m 700 -- "$d" && rm -f -- "$@" '
                  '&& { [ "$t" = 0 ] || printf "%s\\n" "$t" > "$d/heartbeat"; }')
        argv = ["sh", "-c", script, "sh", job_dir, str(self.orphan_timeout()), *stale, JobPaths(job_dir).orphaned]
        result = self.transport.run(argv)
        if not result.ok:
            raise TransientError(f"cannot prepare {job_dir}: {result.describe(argv)}")
        self._beaten = time.monotonic()

    def heartbeat(self, handle: JobHandle) -> None:
        """Tell the job's dead man's switch someone follows it: at most every quarter of the
        orphan timeout (one `touch` of the file; nothing where no switch was armed)."""
        timeout = self.orphan_timeout()
        if timeout <= 0 or time.monotonic() - self._beaten < timeout / 4:
            return
        self._beaten = time.monotonic()
        try:
            self.transport.run(["touch", "-c", "--", JobPaths(handle.job_dir).heartbeat], timeout=30)
        except ConnectorError:
            self._beaten -= timeout / 8  # sooner again; the reads say what is wrong

    def progress(self, handle: JobHandle, stdout_offset: int | None, stderr_offset: int | None,
                 marker: bool) -> Progress:
        reads: list[tuple[str, int, int]] = []
        if stdout_offset is not None:
            reads.append((handle.stdout, stdout_offset, READ_LIMIT))
        if stderr_offset is not None and handle.stderr:
            reads.append((handle.stderr, stderr_offset, READ_LIMIT))
        if marker:
            reads.append((handle.exit_status, 0, 64))
        self.heartbeat(handle)
        results = iter(self.transport.read_files(reads) if reads else [])
        out = (next(results) or b"") if stdout_offset is not None else b""
        err = (next(results) or b"") if stderr_offset is not None and handle.stderr else b""
        status = next(results) if marker else None
        text = status.decode("ascii", "replace").strip() if status else ""
        return Progress(out, err, int(text) if text.isdigit() else None)

    def read_output(self, handle: JobHandle, stream: str, offset: int, limit: int = READ_LIMIT) -> bytes:
        path = handle.stdout if stream == "stdout" else handle.stderr
        return (self.transport.read_from(path, offset, limit) or b"") if path else b""

    def files(self) -> FileStore:
        return self.transport

    def step_argv(self, handle: JobHandle, command: Sequence[str], tty: bool) -> list[str]:
        """The manager's command that runs `command` inside the job (SLURM: srun --overlap)."""
        raise BackendError(f"backend {self.type_name} cannot open a shell in a job's allocation")

    def shell_argv(self, handle: JobHandle, command: Sequence[str], tty: bool) -> list[str]:
        return self.transport.interactive_argv(self.step_argv(handle, command, tty), tty)

    def run_checked(self, argv: list[str], transient: tuple[str, ...] = (),
                    stdin: bytes | None = None) -> CommandResult:
        """A scheduler command (counted); a failure is transient when its text says so."""
        self.scheduler_calls += 1
        result = self.transport.run(argv, stdin=stdin)
        if result.ok:
            return result
        text = result.stderr + result.stdout
        if any(marker in text for marker in transient):
            raise TransientError(result.describe(argv))
        if result.returncode == 127:
            raise BackendError(f"{argv[0]} is not installed on the HPC side (`{argv[0]}` not found)")
        raise BackendError(result.describe(argv))

    def stats(self) -> dict[str, int]:
        link = self._transport
        return {**super().stats(), "round_trips": link.round_trips if link else 0}

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def ssh_transport(profile: object, type_name: str, runtime_dir: str | None) -> Transport:
    """The profile's login node over SSH: strict host keys from the profile's known_hosts,
    the system `ssh` client where there is one (`ssh_client`: auto, openssh, paramiko)."""
    from connector.profile import Profile
    from connector.transport.target import SSHTarget

    assert isinstance(profile, Profile)
    host = profile.setting("host")
    user = profile.setting("user")
    if not host or not user:
        raise ProfileError(f"profile {profile.name!r}: {type_name} needs `host` and `user`")
    for key, value in (("host", host), ("user", user)):
        if not isinstance(value, str) or value.startswith("-") or any(c.isspace() for c in value):
            raise ProfileError(f"profile {profile.name!r}: `{key}` {value!r} is not a host or user name")
    try:
        port = int(profile.setting("port", 22))
    except (TypeError, ValueError):
        raise ProfileError(f"profile {profile.name!r}: port {profile.setting('port')!r} "
                           "is not a number") from None
    target = SSHTarget(
        host=host,
        port=port,
        user=user,
        key_file=str(profile.require_secret("ssh-privatekey")),
        known_hosts_file=str(profile.require_secret("known_hosts")),
    )
    client = str(profile.setting("ssh_client", "auto")).lower()
    if client == "auto":  # the system client where there is one: ~15 MB less resident
        client = "openssh" if shutil.which("ssh") else "paramiko"
    if client == "openssh":
        from connector.transport.openssh import OpenSSHTransport

        return OpenSSHTransport(target, runtime_dir)
    if client != "paramiko":
        raise ProfileError(f"profile {profile.name!r}: ssh_client {client!r} is not auto, openssh or paramiko")
    from connector.transport.ssh import SSHTransport  # paramiko is loaded only when used

    return SSHTransport(target)
