"""A real Kubernetes control plane and node on this machine, built from the Go modules."""
