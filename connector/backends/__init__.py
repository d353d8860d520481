"""Backend discovery: the entry-point group `hpc_offload.backends` (a site adds its own
workload manager as a package, without forking), with the built-in ones as a fallback when
running from a source tree that is not installed."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from connector.backends.base import Backend, JobState, JobStatus
from connector.errors import ProfileError

GROUP = "hpc_offload.backends"
BUILTIN = {
    "slurm-ssh": "connector.backends.slurm_ssh:SlurmSSHBackend",
    "slurm-local": "connector.backends.slurm_local:SlurmLocalBackend",
}


def available() -> dict[str, str]:
    """Backend type name -> "module:Class"."""
    found = dict(BUILTIN)
    for entry in entry_points(group=GROUP):
        found[entry.name.lower()] = entry.value
    return found


def backend_class(type_name: str) -> type[Backend]:
    name = type_name.strip().lower()
    target = available().get(name)
    if target is None:
        known = ", ".join(sorted(available()))
        raise ProfileError(f"backend {type_name!r} is not installed; known backends: {known}")
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ProfileError(f"backend {type_name!r} ({target}) is not a Backend subclass")
    return cls


__all__ = ["Backend", "JobState", "JobStatus", "available", "backend_class"]
