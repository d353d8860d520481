"""slurmrestd with JWT auth, as an unprivileged user (it refuses root).

SLURM_JWT=daemon makes it accept the per-request X-SLURM-USER-TOKEN headers; without it
every request is 401.
"""

from __future__ import annotations

from . import layout
from .daemons import Daemon, port_answers

PLUGINS = "openapi/v0.0.38,openapi/v0.0.37,openapi/v0.0.36"


def _answers(addresses: tuple[str, ...]) -> bool:
    return all(port_answers(a, layout.REST_PORT) for a in addresses)


def daemon(addresses: tuple[str, ...], slurm_conf: str) -> Daemon:
    return Daemon(
        name="slurmrestd",
        argv=("/usr/sbin/slurmrestd", "-a", "rest_auth/jwt", "-s", PLUGINS,
              *(f"{a}:{layout.REST_PORT}" for a in addresses)),
        user=layout.REST_USER,
        env={"SLURM_JWT": "daemon", "SLURM_CONF": str(layout.SLURM_CONF)},
        addresses=tuple(f"http://{a}:{layout.REST_PORT}" for a in addresses),
        config=slurm_conf,
        ready=lambda: _answers(addresses),
    )


def url(host: str = layout.DEFAULT_ADDRESS) -> str:
    return f"http://{host}:{layout.REST_PORT}"
