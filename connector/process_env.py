"""The connector's own process environment.

In a pod the connector's environment is the offloaded container's: the kubelet resolved its
`env` and `envFrom` there so that the connector can forward them to the HPC job. They are data
for the job, never settings for the connector: a pod `PATH` with a fake `ssh` in it, an
`LD_PRELOAD`, an `HTTPS_PROXY` or `SSL_CERT_FILE` must not steer the connector's own programs
and connections. So the connector takes a copy of that environment at start (the job's
variables are built from the copy) and replaces its own with a fixed one that every child
process (`ssh`, `sbatch`, …) inherits. The interpreter itself is started in isolated mode
(`python -I`, see webhook.mutation.connector_command), so `PYTHON*` never acted on it either.
"""

from __future__ import annotations

import os
import pwd

# The image's PATH (Dockerfile: the venv, then the base image's): where `ssh` and, for the
# local backends, the scheduler's client tools are found.
IMAGE_PATH = "/opt/hpc-offload/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The connector's own settings that may come from the environment (pod identity fallbacks,
# the termination log path): read from the copy, kept under the same names.
OWN_PREFIX = "HPC_OFFLOAD_"


def isolate() -> dict[str, str]:
    """Replace this process's environment by the fixed one; return what it was (the
    container's variables, to forward to the job)."""
    original = dict(os.environ)
    clean = {"PATH": IMAGE_PATH, "HOME": _home()}
    clean.update({name: value for name, value in original.items() if name.startswith(OWN_PREFIX)})
    os.environ.clear()
    os.environ.update(clean)
    return original


def _home() -> str:
    """This user's home from the password database (a pod's HOME is the pod's), else /tmp."""
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or "/tmp"
    except KeyError:  # an arbitrary runAsUser with no passwd entry
        return "/tmp"
