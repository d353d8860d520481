"""The backends the contract suite runs against, each with its real server and the manager's
own view of its queue (not the connector's), so a test can check what really happened.

A site runs the suite against its own backend by adding a `Target` here (or in a conftest of
its own that extends `TARGETS`): a profile directory as a pod would mount it, and three probes
into its manager.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    name: str  # the pytest id
    manager: str  # targets with the same manager share slow tests (the time limit)
    profile_dir: Path
    in_queue: Callable[[str], bool]  # the manager still lists the job (pending or running)
    jobs_tagged: Callable[[str], list[str]]  # ids of the jobs carrying this tag (the pod UID)
    break_credential: Callable[[Path], None]  # make the copied profile's credential wrong
    time_limit: dict  # spec fields that give the job a one-minute (or shorter) limit


def _slurm_in_queue(job_id: str) -> bool:
    from testbed import api

    return int(job_id) in api.queued_job_ids()


def _slurm_jobs_tagged(tag: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-O", "JobID:|,Comment:|"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("|")[0] for line in out.splitlines() if line.split("|")[1:2] == [tag]]


def _wrong_ssh_key(directory: Path) -> None:
    """Another key: the login node refuses it."""
    key = directory / "ssh-privatekey"
    key.unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (directory / "ssh-privatekey.pub").unlink()


def _no_local_credential(directory: Path) -> None:
    """slurm-local has none (munge on this machine); a workdir the user cannot write instead."""
    conf = json.loads((directory / "configuration").read_text())
    (directory / "configuration").write_text(json.dumps({**conf, "workdir": "/proc/hpc-offload"}))


def slurm_targets(profiles: dict[str, Path]) -> list[Target]:
    limit = {"resources": {"time_limit": 60}, "poll_interval": 2}
    return [
        Target("slurm-ssh-paramiko", "slurm", profiles["slurm-ssh"], _slurm_in_queue, _slurm_jobs_tagged,
               _wrong_ssh_key, limit),
        Target("slurm-ssh-openssh", "slurm", profiles["slurm-ssh-openssh"], _slurm_in_queue,
               _slurm_jobs_tagged, _wrong_ssh_key, limit),
        Target("slurm-local", "slurm", profiles["slurm-local"], _slurm_in_queue, _slurm_jobs_tagged,
               _no_local_credential, limit),
    ]


def _sge_in_queue(job_id: str) -> bool:
    from testbed import sge

    return int(job_id) in sge.job_ids()


def _sge_jobs_tagged(tag: str) -> list[str]:
    from testbed import sge

    return sge.jobs_named(tag)  # the tag is the job's name: in qstat, or in qacct once ended


def sge_targets(profiles: dict[str, Path]) -> list[Target]:
    limit = {"resources": {"time_limit": 5}, "poll_interval": 2}  # h_rt is enforced to the second
    return [
        Target("sge-ssh-paramiko", "sge", profiles["sge-ssh"], _sge_in_queue, _sge_jobs_tagged,
               _wrong_ssh_key, limit),
        Target("sge-ssh-openssh", "sge", profiles["sge-ssh-openssh"], _sge_in_queue, _sge_jobs_tagged,
               _wrong_ssh_key, limit),
        Target("sge-local", "sge", profiles["sge-local"], _sge_in_queue, _sge_jobs_tagged,
               _no_local_credential, limit),
    ]


def _rimrock_in_queue(job_id: str) -> bool:
    from testbed import api

    return int(job_id.split(".")[0]) in api.queued_job_ids()  # Rimrock's ids: <SLURM id>.<host>


def _rimrock_jobs_tagged(tag: str) -> list[str]:
    """Rimrock's own record of the tag (its job table), not what the connector says."""
    from testbed.rimrock import service
    from testbed.rimrock.store import Store

    store = Store(service.DB)
    return [j.job_id for j in store.on_hosts("hpcuser", store.hosts("hpcuser") or ["-"], tag)]


def _foreign_proxy(directory: Path) -> None:
    """A proxy for the same user from a CA the server does not trust."""
    from testbed.rimrock import pki

    ca, ca_key = pki.make_ca("not the testbed's CA")
    user, user_key = pki.make_user(ca, ca_key, "hpcuser")
    (directory / "proxy").write_text(pki.make_proxy(user, user_key))


def rimrock_targets(profiles: dict[str, Path]) -> list[Target]:
    """The Rimrock-compatible server of the testbed (its profile written here: one proxy)."""
    import atexit
    import tempfile

    from testbed import profile

    directory = Path(tempfile.mkdtemp(prefix="contract-rimrock-"))
    atexit.register(shutil.rmtree, directory, True)  # it holds a proxy: not left in /tmp
    profile.write_dir(directory, "rimrock", "127.0.0.1")
    limit = {"resources": {"time_limit": 60}, "poll_interval": 2}
    return [Target("rimrock", "slurm", directory, _rimrock_in_queue, _rimrock_jobs_tagged,
                   _foreign_proxy, limit)]


def _tampered_token(directory: Path) -> None:
    """The token with its signature altered: slurmctld refuses it (slurmrestd says only
    "Unspecified error", so the connector keeps retrying and says the token may be the cause)."""
    head, payload, signature = (directory / "token").read_text().strip().split(".")
    (directory / "token").write_text(f"{head}.{payload}.{signature[::-1]}")


def slurm_rest_targets(profiles: dict[str, Path]) -> list[Target]:
    """slurmrestd of the testbed with the Secret's token, output over SSH (profile written here)."""
    import tempfile

    from testbed import profile

    directory = Path(tempfile.mkdtemp(prefix="contract-slurm-rest-"))
    profile.write_dir(directory, "slurm-rest", "127.0.0.1")
    limit = {"resources": {"time_limit": 60}, "poll_interval": 2}
    return [Target("slurm-rest", "slurm-rest", directory, _slurm_in_queue, _slurm_jobs_tagged,
                   _tampered_token, limit)]


# Every target family: a function of the session's profile dirs. Backends add theirs here.
TARGET_FAMILIES: list[Callable[[dict[str, Path]], list[Target]]] = [slurm_targets, sge_targets, rimrock_targets]
TARGET_NAMES = ["slurm-ssh-paramiko", "slurm-ssh-openssh", "slurm-local",
                "sge-ssh-paramiko", "sge-ssh-openssh", "sge-local", "rimrock"]
ONE_PER_MANAGER = ["slurm-local", "sge-local"]  # for what depends on the manager only (the time limit)

# slurm-rest: SLURM again, but its own time limit test (the limit travels in the REST request)
TARGET_FAMILIES.append(slurm_rest_targets)
TARGET_NAMES.append("slurm-rest")
ONE_PER_MANAGER.append("slurm-rest")


def copy_profile(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination
