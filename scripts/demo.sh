#!/usr/bin/env bash
# The demo (README): on a fresh machine, as root, bring up a real SLURM testbed and a real
# local Kubernetes cluster, install hpc-offload as users do (kubectl apply -k), apply a
# testbed profile and an annotated Job, and watch the Job's log come from SLURM.
# First run: ~8 minutes (Kubernetes is built from the Go modules); later runs: ~1 minute.
source "$(dirname "$0")/lib.sh"
need_root
cd "$REPO"
ensure_python

step "SLURM testbed (munge, slurmctld, slurmd, slurmrestd, sshd :2222, charliecloud image)"
hpc-offload testbed up

step "local Kubernetes (kube-apiserver & co. from the Go modules, containerd, runc) and the image"
hpc-offload e2e cluster up --load-image
hpc-offload testbed up --listen 10.88.0.1      # pods reach the testbed at the bridge gateway
KUBECONFIG="$(hpc-offload e2e cluster kubeconfig)"
export KUBECONFIG
kubectl() { "$(python -c 'from e2e.cluster import info; print(info().kubectl)')" "$@"; }

step "install: kubectl apply -k manifests/overlays/dev"
kubectl -n hpc-offload delete job hpc-offload-certs --ignore-not-found >/dev/null 2>&1 || true
installed="$(kubectl -n hpc-offload get deployment hpc-offload-relay -o name 2>/dev/null || true)"
kubectl apply -k manifests/overlays/dev
kubectl -n hpc-offload wait --for=condition=complete job/hpc-offload-certs --timeout=180s
# a rebuilt image keeps its tag: move a previous install's pods onto it (a no-op when unchanged)
key="$(python -c 'from e2e.cluster.images import project_image_key; print(project_image_key())')"
template="{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"hpc-offload.io/image-key\":\"$key\"}}}}}"
for deployment in hpc-offload-webhook hpc-offload-relay; do
  if [ -n "$installed" ]; then
    kubectl -n hpc-offload patch deployment "$deployment" --type merge -p "$template" >/dev/null
  fi
  kubectl -n hpc-offload rollout status deployment/"$deployment" --timeout=180s
done

step "a namespace with the testbed's backend profile (ConfigMap + Secret named 'testbed')"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f -
hpc-offload testbed profile slurm-ssh --name testbed --host 10.88.0.1 | kubectl apply -n demo -f -

step "an annotated Job: kubectl apply -f examples/testbed-job.yaml"
kubectl -n demo delete job hello-hpc --ignore-not-found --wait=true >/dev/null
kubectl -n demo apply -f examples/testbed-job.yaml
# started: Ready means "the HPC job is running", and a 5 s job can end between two probes
for _ in $(seq 240); do
  case "$(kubectl -n demo get pod -l job-name=hello-hpc -o jsonpath='{.items[0].status.phase}')" in
    Running|Succeeded|Failed) break ;;
  esac
  sleep 0.5
done
uid="$(kubectl -n demo get pod -l job-name=hello-hpc -o jsonpath='{.items[0].metadata.uid}')"
for _ in $(seq 100); do   # the connector submits within about a second
  [ -n "$(squeue -h --states=all --name="hpco-$uid" -o %i)" ] && break
  sleep 0.1
done
echo "--- squeue: the pod's HPC job (named after the pod's UID):"
squeue --states=all --name="hpco-$uid" -o '%.8i %.45j %.10T %.8M %R'
echo "--- kubectl logs -f job/hello-hpc (output streamed from the SLURM job):"
kubectl -n demo logs -f job/hello-hpc
kubectl -n demo wait --for=condition=complete job/hello-hpc --timeout=120s
echo "--- the Job completed:"
kubectl -n demo get job hello-hpc
kubectl -n demo get pods -l job-name=hello-hpc \
  -o jsonpath='{range .items[*]}{.metadata.name}: exit code {.status.containerStatuses[0].state.terminated.exitCode}, {.status.containerStatuses[0].state.terminated.message}{"\n"}{end}'
echo "--- kubectl hpc jobs -n demo:"
hpc-offload jobs -n demo
