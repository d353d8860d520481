"""Grid Engine on this machine: for a connector running on a submit host (or the testbed)."""

from __future__ import annotations

from connector.backends.sge import SgeBackend


class SgeLocalBackend(SgeBackend):
    type_name = "sge-local"
    access = "local"
