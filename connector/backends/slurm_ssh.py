"""SLURM on a login node reached over SSH: the usual way to an HPC site, no change there."""

from __future__ import annotations

import shutil

from connector.backends.slurm import SlurmBackend
from connector.errors import ProfileError
from connector.transport.base import Transport


class SlurmSSHBackend(SlurmBackend):
    type_name = "slurm-ssh"

    def make_transport(self) -> Transport:
        from connector.transport.target import SSHTarget

        profile = self.profile
        host = profile.setting("host")
        user = profile.setting("user")
        if not host or not user:
            raise ProfileError(f"profile {profile.name!r}: slurm-ssh needs `host` and `user`")
        try:
            port = int(profile.setting("port", 22))
        except (TypeError, ValueError):
            raise ProfileError(f"profile {profile.name!r}: port {profile.setting('port')!r} "
                               "is not a number") from None
        target = SSHTarget(
            host=str(host),
            port=port,
            user=str(user),
            key_file=str(profile.require_secret("ssh-privatekey")),
            known_hosts_file=str(profile.require_secret("known_hosts")),
        )
        client = str(profile.setting("ssh_client", "auto")).lower()
        if client == "auto":  # the system client where there is one: ~15 MB less resident
            client = "openssh" if shutil.which("ssh") else "paramiko"
        if client == "openssh":
            from connector.transport.openssh import OpenSSHTransport

            return OpenSSHTransport(target, self.runtime_dir)
        if client != "paramiko":
            raise ProfileError(f"profile {profile.name!r}: ssh_client {client!r} is not auto, openssh or paramiko")
        from connector.transport.ssh import SSHTransport  # paramiko is loaded only when used

        return SSHTransport(target)
