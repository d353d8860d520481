#!/usr/bin/env bash
# The e2e suite against a kind cluster instead of the local one (needs Docker, kind, kubectl).
#
#   sudo -E bash e2e/kind/run.sh [pytest args…]      # root: the SLURM testbed runs on this host
#
# 1. creates kind cluster "hpc-offload" (KIND_NODE_IMAGE to pin a node image; reused if present)
# 2. docker build -t hpc-offload:dev . ; kind load docker-image hpc-offload:dev
# 3. kubectl apply -k manifests/overlays/dev ; waits for the cert Job and the webhook
# 4. starts the SLURM testbed listening on the kind network's gateway (the host as the kind
#    node sees it, typically 172.18.0.1): pods reach sshd there on port 2222
# 5. runs the e2e suite with HPC_OFFLOAD_E2E_KUBECONFIG (the kind cluster, not the local one)
#    and HPC_OFFLOAD_E2E_TESTBED_HOST (that gateway)
# KEEP=1 keeps the cluster afterwards; otherwise it is deleted.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=hpc-offload
KUBECONFIG_FILE=${KUBECONFIG_FILE:-${TMPDIR:-/tmp}/hpc-offload-kind.kubeconfig}

for tool in docker kind kubectl hpc-offload; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 2; }
done

if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --config e2e/kind/kind-config.yaml ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
[ "${KEEP:-0}" = 1 ] || trap 'kind delete cluster --name "$CLUSTER"' EXIT
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG_FILE"
export KUBECONFIG=$KUBECONFIG_FILE

docker build -t hpc-offload:dev .
kind load docker-image hpc-offload:dev --name "$CLUSTER"

kubectl apply -k manifests/overlays/dev
kubectl -n hpc-offload wait --for=condition=complete job/hpc-offload-certs --timeout=300s
kubectl -n hpc-offload rollout status deployment/hpc-offload-webhook --timeout=300s

# The host as the kind node sees it: the node's default gateway (docker network "kind").
GATEWAY=$(docker exec "$CLUSTER-control-plane" ip -4 route show default | awk '{print $3; exit}')
[ -n "$GATEWAY" ] || { echo "run.sh: cannot find the kind node's IPv4 gateway" >&2; exit 1; }
hpc-offload testbed up --listen "$GATEWAY"

HPC_OFFLOAD_E2E_KUBECONFIG=$KUBECONFIG_FILE HPC_OFFLOAD_E2E_TESTBED_HOST=$GATEWAY \
  python3 -m pytest e2e -m e2e "$@"
