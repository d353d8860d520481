# Shared by scripts/demo.sh and scripts/test.sh: make this machine ready, as root, from nothing
# but Debian's packages, PyPI and the Go module proxy. Everything built is cached outside the
# clone (/var/cache/hpc-offload), so a second run takes seconds.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${HPC_OFFLOAD_CACHE:-/var/cache/hpc-offload}"
VENV="${HPC_OFFLOAD_VENV:-$CACHE/venv}"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
export GOCACHE="${GOCACHE:-$CACHE/go-build}" GOMODCACHE="${GOMODCACHE:-$CACHE/go-mod}"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: run this as root (it installs packages and starts SLURM and Kubernetes daemons)" >&2
    exit 1
  fi
}

ensure_python() {
  # python3 with venv and pip; Debian's python3-venv if the interpreter lacks ensurepip
  if ! command -v python3 >/dev/null; then
    apt-get update -q && apt-get install -y -q python3 python3-venv python3-pip
  fi
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -q && apt-get install -y -q python3-venv
  fi
  mkdir -p "$CACHE"
  if [ ! -x "$VENV/bin/python" ]; then
    step "creating the Python environment in $VENV"
    python3 -m venv "$VENV"
  fi
  step "installing hpc-offload (editable) and its test tools"
  "$VENV/bin/pip" install -q -e "$REPO[test]"
  export PATH="$VENV/bin:$PATH"
  build_follower
}

build_follower() {
  # the lean follower (follower/, Go standard library only) beside the venv's python, where
  # the connector looks for it; without Go the connector follows relay jobs itself
  local go="${HPC_OFFLOAD_GO:-/usr/local/go/bin/go}"
  if [ ! -x "$go" ]; then
    echo "note: no Go at $go: relay-mode connectors on this host follow jobs in Python" >&2
    return 0
  fi
  (cd "$REPO/follower" && CGO_ENABLED=0 GOTOOLCHAIN=local GOPROXY=off GOFLAGS= \
    "$go" build -trimpath -ldflags="-s -w" -o "$VENV/bin/hpc-offload-follow" .)
}
