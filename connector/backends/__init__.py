"""Backend discovery: the built-in backends by name, and the entry-point group
`hpc_offload.backends` for the rest (a site adds its own workload manager as a package,
without forking). Built-in names resolve without reading package metadata: importlib.metadata
costs the connector ~3 MB of resident memory and ~40 ms of start-up."""

from __future__ import annotations

import importlib

from connector.backends.base import Backend, Capability, JobHandle, JobRequest, JobState, JobStatus
from connector.errors import ProfileError

GROUP = "hpc_offload.backends"
BUILTIN = {
    "slurm-ssh": "connector.backends.slurm_ssh:SlurmSSHBackend",
    "slurm-local": "connector.backends.slurm_local:SlurmLocalBackend",
    "rimrock": "connector.backends.rimrock:RimrockBackend",
    "slurm-rest": "connector.backends.slurm_rest:SlurmRestBackend",
    "sge-ssh": "connector.backends.sge_ssh:SgeSSHBackend",
    "sge-local": "connector.backends.sge_local:SgeLocalBackend",
}


def available() -> dict[str, str]:
    """Backend type name -> "module:Class"; a built-in name is not overridden."""
    from importlib.metadata import entry_points

    found = {entry.name.lower(): entry.value for entry in entry_points(group=GROUP)}
    return {**found, **BUILTIN}


def backend_class(type_name: str) -> type[Backend]:
    name = type_name.strip().lower()
    target = BUILTIN.get(name) or available().get(name)
    if target is None:
        known = ", ".join(sorted(available()))
        raise ProfileError(f"backend {type_name!r} is not installed; known backends: {known}")
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ProfileError(f"backend {type_name!r} ({target}) is not a Backend subclass")
    return cls


__all__ = ["Backend", "Capability", "JobHandle", "JobRequest", "JobState", "JobStatus", "available", "backend_class"]
