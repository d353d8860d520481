"""Backends are found by name: built-ins directly, others through the entry-point group
`hpc_offload.backends` (paper requirement R5: a site adds a workload manager as a package)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from connector.backends import backend_class
from connector.backends.slurm_local import SlurmLocalBackend
from connector.backends.slurm_ssh import SlurmSSHBackend
from connector.errors import ProfileError


def test_builtin_backends_resolve_case_insensitively():
    assert backend_class("slurm-ssh") is SlurmSSHBackend
    assert backend_class(" SLURM-Local ") is SlurmLocalBackend


def test_the_installed_distribution_registers_its_backends():
    from importlib.metadata import entry_points

    names = {entry.name for entry in entry_points(group="hpc_offload.backends")}
    assert {"slurm-ssh", "slurm-local"} <= names


@pytest.fixture
def site_package(tmp_path, monkeypatch):
    """A third-party package with a backend, installed as a real dist-info on sys.path."""
    (tmp_path / "mysite_backend.py").write_text(textwrap.dedent("""\
        from connector.backends.slurm_local import SlurmLocalBackend

        class MySiteBackend(SlurmLocalBackend):
            type_name = "mysite"

        NotABackend = dict
    """))
    info = tmp_path / "mysite_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mysite-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[hpc_offload.backends]\nmysite = mysite_backend:MySiteBackend\nbroken = mysite_backend:NotABackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("mysite_backend", None)


def test_a_site_backend_is_found_through_its_entry_point(site_package):
    cls = backend_class("MySite")
    assert cls.__name__ == "MySiteBackend" and issubclass(cls, SlurmLocalBackend)


def test_an_entry_point_that_is_not_a_backend_is_refused(site_package):
    with pytest.raises(ProfileError, match="'broken' .* is not a Backend subclass"):
        backend_class("broken")


def test_an_unknown_backend_names_the_known_ones(site_package):
    with pytest.raises(ProfileError) as exc:
        backend_class("pbs-ssh")
    assert "'pbs-ssh' is not installed" in exc.value.message
    known = exc.value.message.split("known backends: ")[1].split(", ")
    assert {"mysite", "slurm-local", "slurm-ssh", "sge-local", "sge-ssh"} <= set(known)
    assert known == sorted(known)


def _ssh_backend(tmp_path, **conf) -> SlurmSSHBackend:
    from connector.profile import Profile

    for name in ("ssh-privatekey", "known_hosts"):
        (tmp_path / name).write_text("unused: the transport is only built, never connected\n")
    return SlurmSSHBackend(Profile("slurm-ssh", {"host": "login", "user": "alice", **conf},
                                   secret_dir=tmp_path, name="site"), runtime_dir=str(tmp_path))


@pytest.mark.parametrize(("conf", "ssh_on_path", "expected"), [
    ({}, True, "OpenSSHTransport"),                       # default: the system client if present
    ({}, False, "SSHTransport"),                          # ... else paramiko
    ({"ssh_client": "paramiko"}, True, "SSHTransport"),
    ({"ssh_client": "OpenSSH"}, True, "OpenSSHTransport"),
])
def test_the_ssh_client_is_the_system_one_unless_the_profile_says(tmp_path, monkeypatch, conf, ssh_on_path,
                                                                  expected):
    import shutil

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: real_which(name) if ssh_on_path else None)
    transport = _ssh_backend(tmp_path, **conf).transport
    try:
        assert type(transport).__name__ == expected
    finally:
        transport.close()


def test_an_unknown_ssh_client_is_a_profile_error(tmp_path):
    with pytest.raises(ProfileError, match="ssh_client 'putty' is not auto, openssh or paramiko"):
        _ssh_backend(tmp_path, ssh_client="putty").transport
