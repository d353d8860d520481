"""Grid Engine on a login node reached over SSH: qsub/qstat/qacct/qdel there, files over SSH."""

from __future__ import annotations

from connector.backends.sge import SgeBackend


class SgeSSHBackend(SgeBackend):
    type_name = "sge-ssh"
    access = "ssh"
