"""A real Kubernetes control plane and node on this machine, built from the Go modules.

Python API for the e2e fixtures: `ensure_up()` starts (or finds) the cluster and returns a
`ClusterInfo`; `load_image()` builds and imports the project image; `down()` removes it all.
"""

from e2e.cluster.cluster import ClusterInfo, down, ensure_up, info, load_image, status

__all__ = ["ClusterInfo", "down", "ensure_up", "info", "load_image", "status"]
