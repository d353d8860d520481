"""Backend profiles: the paper's ConfigMap (`name`, `configuration`, `monitoring_period`) and an
optional Secret (`ssh-privatekey`, `known_hosts`, `token`, `proxy`), mounted as one directory.

Secrets are never read into the profile object: backends get their *paths* and read them at
each connection, so a rotated Secret (the kubelet updates the files) refreshes credentials.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.errors import ProfileError
from connector.spec import parse_duration

SECRET_KEYS = ("ssh-privatekey", "known_hosts", "token", "proxy")


@dataclass(frozen=True)
class Profile:
    backend: str
    configuration: Mapping[str, Any] = field(default_factory=dict)
    monitoring_period: float | None = None
    secret_dir: Path | None = None
    name: str = "profile"

    def setting(self, key: str, default: Any = None) -> Any:
        return self.configuration.get(key, default)

    def secret_path(self, key: str) -> Path | None:
        """Path of a credential file, or a path named in the configuration (paper-style CLI)."""
        configured = self.configuration.get(key.replace("-", "_") + "_file")
        if configured:
            return Path(str(configured)).expanduser()
        if self.secret_dir is not None:
            return self.secret_dir / key
        return None

    def require_secret(self, key: str) -> Path:
        path = self.secret_path(key)
        if path is None or not path.exists():
            raise ProfileError(
                f"profile {self.name!r} has no `{key}`: put it in the Secret named like the "
                f"profile (or set `{key.replace('-', '_')}_file` in its configuration)"
            )
        return path


def load_profile_dir(directory: str | Path) -> Profile:
    """Read a mounted profile (ConfigMap and Secret projected into one directory)."""
    path = Path(directory)
    if not path.is_dir():
        raise ProfileError(
            f"profile directory {path} does not exist: is the profile ConfigMap in this namespace?"
        )
    backend = _read_text(path / "name") or _read_text(path / "type")
    if not backend:
        raise ProfileError(f"profile {path} has no `name` (or `type`) key naming the backend")
    raw_conf = _read_text(path / "configuration") or "{}"
    period = _read_text(path / "monitoring_period")
    return profile_from_values(backend, raw_conf, period, secret_dir=path, name=path.name)


def profile_from_values(
    backend: str,
    configuration: str | Mapping[str, Any],
    monitoring_period: str | float | None = None,
    secret_dir: Path | None = None,
    name: str = "profile",
) -> Profile:
    if isinstance(configuration, str):
        try:
            conf = json.loads(configuration)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"profile `configuration` is not valid JSON: {exc}") from None
    else:
        conf = dict(configuration)
    if not isinstance(conf, dict):
        raise ProfileError("profile `configuration` must be a JSON object")
    leaked = sorted(k for k in conf if k.replace("_", "-") in SECRET_KEYS)
    if leaked:
        raise ProfileError(
            f"profile `configuration` holds a credential ({', '.join(leaked)}): move it to the "
            "profile Secret"
        )
    period = None
    if monitoring_period not in (None, ""):
        try:
            period = parse_duration(monitoring_period, "monitoring_period")  # type: ignore[arg-type]
        except Exception as exc:  # SpecError: the profile is what is wrong here
            raise ProfileError(str(exc)) from None
    return Profile(
        backend=backend.strip().lower(),
        configuration=conf,
        monitoring_period=period,
        secret_dir=secret_dir,
        name=name,
    )


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
