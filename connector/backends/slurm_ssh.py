"""SLURM on a login node reached over SSH: the usual way to an HPC site, no change there."""

from __future__ import annotations

from connector.backends.slurm import SlurmBackend
from connector.errors import ProfileError
from connector.transport.base import Transport


class SlurmSSHBackend(SlurmBackend):
    type_name = "slurm-ssh"

    def make_transport(self) -> Transport:
        from connector.transport.ssh import SSHTarget, SSHTransport  # paramiko only when used

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
        return SSHTransport(
            SSHTarget(
                host=str(host),
                port=port,
                user=str(user),
                key_file=str(profile.require_secret("ssh-privatekey")),
                known_hosts_file=str(profile.require_secret("known_hosts")),
            )
        )
