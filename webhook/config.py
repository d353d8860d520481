"""The webhook's own settings: what the connector container looks like.

Kept apart from the cluster policy (who may offload what) because it is the operator's choice
of image and footprint, set once per installation from a file and/or environment variables
(the Deployment's env), and read only at start-up.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "HPC_OFFLOAD_"
CONFIG_ENV = "HPC_OFFLOAD_CONFIG"  # path of the config file
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
DEFAULT_GPU_RESOURCE_NAMES = ("nvidia.com/gpu", "amd.com/gpu")

# used with fullmatch (`$` would accept a trailing newline)
_QUANTITY = re.compile(r"\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_RESOURCE_NAME = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_ABSOLUTE_PATH = re.compile(r"/[^\s\x00-\x1f\x7f]*")
_RELAY_URL = re.compile(r"https://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/\-]*)?")


class ConfigError(ValueError):
    """The webhook configuration is invalid (a start-up error, never an admission error)."""


def _default_resources() -> dict[str, dict[str, str]]:
    # Small and explicit so ResourceQuota/LimitRange admit the connector (linkerd#2750).
    return {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}


@dataclass(frozen=True)
class WebhookConfig:
    """How the webhook builds the connector container (see docs/mutation-contract.md)."""

    connector_image: str = "hpc-offload:0.1.0"
    # the image's own interpreter (Dockerfile: `python3 -m venv /opt/hpc-offload`), by
    # absolute path so no pod PATH picks another (docs/mutation-contract.md)
    connector_python: str = "/opt/hpc-offload/bin/python3"
    image_pull_policy: str = "IfNotPresent"
    connector_resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=_default_resources
    )
    min_grace_seconds: int = 60
    gpu_resource_names: tuple[str, ...] = DEFAULT_GPU_RESOURCE_NAMES
    fs_group: int = 10001
    run_as_user: int = 10001
    run_as_group: int = 10001
    policy_file: str | None = None
    # The relay (docs/relay.md): its URL and CA are given to every connector, with a projected
    # ServiceAccount token of audience `hpc-offload-relay` that the relay checks (TokenReview).
    relay_url: str | None = None
    relay_ca_file: str | None = None  # read once at start into relay_ca (load_config)
    relay_ca: str | None = None  # PEM of the CA that signed the relay's certificate
    relay_token_seconds: int = 3600
    # The webhook's own projected token for the relay: set, the webhook tells the relay which
    # offloaded pods are deleted, and it cancels their jobs at once (webhook.deletion).
    relay_token_file: str | None = None
    # The connector listens on this port only while its HPC job runs; a TCP readiness probe on
    # it makes `kubectl get pods` show 0/1 while queued and 1/1 while running (0: no probe).
    ready_port: int = 8471

    def __post_init__(self) -> None:
        if not self.connector_image or any(c.isspace() for c in self.connector_image):
            raise ConfigError(f"connector_image: {self.connector_image!r} is not an image name")
        if not _ABSOLUTE_PATH.fullmatch(self.connector_python):
            raise ConfigError(f"connector_python: {self.connector_python!r} must be an absolute "
                              "path without spaces (the connector image's python3)")
        if self.ready_port != 0 and not 1024 <= self.ready_port <= 65535:
            raise ConfigError(f"ready_port: {self.ready_port} must be 1024-65535 (a non-root port), or 0")
        if self.image_pull_policy not in PULL_POLICIES:
            raise ConfigError(
                f"image_pull_policy: {self.image_pull_policy!r} is not one of "
                f"{', '.join(PULL_POLICIES)}"
            )
        if not isinstance(self.connector_resources, Mapping):
            raise ConfigError("connector_resources: must be a mapping of requests/limits")
        for kind, values in self.connector_resources.items():
            if kind not in ("requests", "limits") or not isinstance(values, Mapping):
                raise ConfigError(
                    f"connector_resources: {kind!r} must be requests or limits, each a mapping"
                )
            for name, quantity in values.items():
                if not _QUANTITY.fullmatch(str(quantity)):
                    raise ConfigError(
                        f"connector_resources.{kind}.{name}: {quantity!r} is not a quantity"
                    )
        for name in ("min_grace_seconds", "fs_group", "run_as_user", "run_as_group", "relay_token_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}: {value!r} must be a whole number, 0 or more")
        if self.relay_url is not None and not _RELAY_URL.fullmatch(self.relay_url):
            raise ConfigError(f"relay_url: {self.relay_url!r} is not https://HOST[:PORT]")
        if self.relay_ca is not None and not self.relay_ca.lstrip().startswith("-----BEGIN CERTIFICATE-----"):
            raise ConfigError("relay_ca: not a PEM certificate")
        if self.relay_token_file is not None and (self.relay_url is None
                                                  or not _ABSOLUTE_PATH.fullmatch(self.relay_token_file)):
            raise ConfigError(f"relay_token_file: {self.relay_token_file!r} must be an absolute path, "
                              "with relay_url set")
        if self.relay_url is not None and self.relay_token_seconds < 600:
            raise ConfigError("relay_token_seconds: at least 600 (the kubelet's minimum)")
        if self.run_as_user == 0 or self.run_as_group == 0:
            raise ConfigError("run_as_user/run_as_group: the connector never runs as root (0)")
        if isinstance(self.gpu_resource_names, str):
            raise ConfigError("gpu_resource_names: must be a list of resource names")
        for name in self.gpu_resource_names:
            if not _RESOURCE_NAME.fullmatch(name):
                raise ConfigError(f"gpu_resource_names: {name!r} is not a resource name")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> WebhookConfig:
        """Build from plain data; camelCase keys are accepted as in Kubernetes manifests."""
        if not isinstance(data, Mapping):
            raise ConfigError("the webhook config must be a mapping")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = _snake(str(key))
            if name not in known:
                raise ConfigError(f"unknown webhook config key {key!r}; known: {sorted(known)}")
            values[name] = value
        if "gpu_resource_names" in values and not isinstance(values["gpu_resource_names"], str):
            values["gpu_resource_names"] = tuple(str(v) for v in values["gpu_resource_names"])
        if "connector_resources" in values and isinstance(values["connector_resources"], Mapping):
            values["connector_resources"] = {
                str(k): {str(n): str(q) for n, q in (v or {}).items()}
                for k, v in values["connector_resources"].items()
            }
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"malformed webhook config: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WebhookConfig:
        """A YAML (or JSON, a subset of YAML) file."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read webhook config {path}: {exc}") from None
        return cls.from_mapping(data or {})

    def with_env(self, environ: Mapping[str, str]) -> WebhookConfig:
        """Override fields from `HPC_OFFLOAD_<FIELD>` variables (the Deployment's env)."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            if f.name == "connector_resources":
                try:
                    changes[f.name] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{ENV_PREFIX}CONNECTOR_RESOURCES: not JSON: {exc}") from None
            elif f.name == "gpu_resource_names":
                changes[f.name] = tuple(p.strip() for p in raw.split(",") if p.strip())
            elif f.name in ("min_grace_seconds", "fs_group", "run_as_user", "run_as_group", "relay_token_seconds",
                            "ready_port"):
                try:
                    changes[f.name] = int(raw)
                except ValueError:
                    raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}: {raw!r} is not a number") \
                        from None
            elif f.name in ("policy_file", "relay_url", "relay_ca_file", "relay_ca", "relay_token_file"):
                changes[f.name] = raw or None  # an empty value switches it off
            else:
                changes[f.name] = raw
        return replace(self, **changes) if changes else self


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> WebhookConfig:
    """File (argument, else `$HPC_OFFLOAD_CONFIG`, else defaults), then env overrides."""
    env = os.environ if environ is None else environ
    path = path or env.get(CONFIG_ENV) or None
    base = WebhookConfig.from_file(path) if path else WebhookConfig()
    return with_relay_ca(base.with_env(env))


def with_relay_ca(config: WebhookConfig) -> WebhookConfig:
    """The relay's CA read from `relay_ca_file` (at start: the mutation does no I/O)."""
    if config.relay_ca_file is None or config.relay_ca is not None:
        return config
    try:
        text = Path(config.relay_ca_file).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"relay_ca_file: cannot read {config.relay_ca_file}: {exc}") from None
    return replace(config, relay_ca=text)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("-", "_")
