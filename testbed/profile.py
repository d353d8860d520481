"""A ready backend profile for the testbed: the ConfigMap and Secret the connector reads.

Printed as YAML for `kubectl apply -f -`, or written as plain files in the layout the
connector sees in a pod (a projected volume of both). The Secret's values are credentials:
they go to stdout or to 0600 files, never to a log or an error message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from . import image, layout, listen, rest
from .rimrock import service as rimrock_service
from .slurm import token as slurm_token

TYPES = ("slurm-ssh", "slurm-local", "slurm-rest", "sge-ssh", "sge-local", "rimrock")
MONITORING_PERIOD = "2"
TOKEN_LIFESPAN = 86400
PROXY_LIFETIME = 7 * 86400  # a grid proxy, as voms-proxy-init -valid 168:00


def configuration(kind: str, host: str) -> dict[str, object]:
    """The non-secret settings (the ConfigMap's `configuration` JSON)."""
    workdir = str(layout.WORKDIR)
    if kind == "slurm-ssh":
        return {"host": host, "port": layout.SSH_PORT, "user": layout.TEST_USER,
                "workdir": workdir, "partition": layout.PARTITION,
                "runtime": "charliecloud", "image": str(image.image_dir())}
    if kind == "slurm-local":
        return {"workdir": workdir, "partition": layout.PARTITION,
                "runtime": "charliecloud", "image": str(image.image_dir())}
    if kind in ("sge-ssh", "sge-local"):  # Grid Engine: its queue and parallel environment
        ssh = {"host": host, "port": layout.SSH_PORT, "user": layout.TEST_USER}
        return {**(ssh if kind == "sge-ssh" else {}), "workdir": workdir,
                "queue": layout.SGE_QUEUE, "pe": layout.SGE_PE,
                "runtime": "charliecloud", "image": str(image.image_dir())}
    if kind == "slurm-rest":  # control over REST; output and files over SSH (drop host: REST only)
        return {"endpoint": rest.url(host), "user": layout.TEST_USER,
                "api_version": layout.REST_API_VERSION, "workdir": workdir,
                "partition": layout.PARTITION, "host": host, "port": layout.SSH_PORT,
                "runtime": "charliecloud", "image": str(image.image_dir())}
    if kind == "rimrock":  # `host` is the login node Rimrock submits to, by its name
        return {"endpoint": rimrock_service.url(host), "host": rimrock_service.login_host(),
                "workdir": workdir, "partition": layout.PARTITION, "runtime": "charliecloud",
                "image": str(image.image_dir()), "tail_interval": 1}
    raise ValueError(f"unknown profile type {kind!r}; expected one of {', '.join(TYPES)}")


def _known_hosts_for(host: str) -> str:
    prefix = f"[{host}]:{layout.SSH_PORT} "
    lines = [x for x in layout.KNOWN_HOSTS.read_text().splitlines() if x.startswith(prefix)]
    return "".join(f"{x}\n" for x in lines)


def files(kind: str, host: str) -> tuple[dict[str, str], dict[str, str]]:
    """(ConfigMap data, Secret data) as key → text."""
    data = {
        "name": kind,
        "configuration": json.dumps(configuration(kind, host), sort_keys=True),
        "monitoring_period": MONITORING_PERIOD,
    }
    secret: dict[str, str] = {}
    if kind in ("slurm-ssh", "sge-ssh", "slurm-rest"):
        secret["ssh-privatekey"] = layout.CLIENT_KEY.read_text()
        secret["known_hosts"] = _known_hosts_for(host)
    if kind == "slurm-rest":
        secret["token"] = slurm_token(layout.TEST_USER, TOKEN_LIFESPAN)
    elif kind == "rimrock":
        secret["proxy"] = rimrock_service.proxy(lifetime=PROXY_LIFETIME)
    return data, secret


def manifests(name: str, kind: str, host: str) -> str:
    """ConfigMap + Secret as one multi-document YAML text."""
    data, secret = files(kind, host)
    docs: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "hpc-offload"}},
         "data": data},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "hpc-offload"}},
         "stringData": secret},
    ]
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


class _Dumper(yaml.SafeDumper):
    """Multi-line values (keys, known_hosts) as `|` blocks, readable and copy-pastable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def write_dir(directory: Path, kind: str, host: str) -> list[Path]:
    """Write the keys as files (secrets 0600, the rest 0644), as a projected volume has them."""
    data, secret = files(kind, host)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for items, mode in ((data, 0o644), (secret, 0o600)):
        for key, value in items.items():
            path = directory / key
            path.unlink(missing_ok=True)  # a fresh file gets `mode` from the start
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "w") as f:
                f.write(value)
            os.chmod(path, mode)  # umask-proof
            written.append(path)
    return written


class ProfileError(RuntimeError):
    """The profile could not work as asked (its message holds no secret)."""


def check_ready(kind: str, host: str) -> None:
    """Fail before printing anything if the profile could not work."""
    if kind not in TYPES:
        raise ProfileError(f"unknown profile type {kind!r}; expected one of {', '.join(TYPES)}")
    if host not in listen.remembered():
        raise ProfileError(f"the testbed does not listen on {host}; run "
                           f"`hpc-offload testbed up --listen {host}` first")
    if kind in ("slurm-ssh", "sge-ssh", "slurm-rest") and not (layout.KNOWN_HOSTS.exists()
                                                             and layout.CLIENT_KEY.exists()):
        raise ProfileError("the testbed has no SSH keys yet; run `hpc-offload testbed up`")
    if kind == "rimrock" and not rimrock_service.CA_FILE.exists():
        raise ProfileError("the testbed has no grid CA yet; run `hpc-offload testbed up`")
