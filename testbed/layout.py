"""Where the testbed keeps its state, and the fixed names and ports it uses.

Everything generated lives under one state directory outside the git clone, so keys and
SLURM's job state survive a fresh checkout and `down`/`up` cycles. Only slurm.conf goes to
its system path, so `sbatch` and friends work for every user without SLURM_CONF.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR = Path(os.environ.get("HPC_OFFLOAD_TESTBED_DIR", "/var/lib/hpc-offload/testbed"))
RUN_DIR = STATE_DIR / "run"  # pid files and the argv each daemon was started with
LOG_DIR = STATE_DIR / "log"
SSH_DIR = STATE_DIR / "ssh"
SLURM_DIR = STATE_DIR / "slurm"
MARIADB_DIR = STATE_DIR / "mariadb"  # accounting database: datadir, socket, pid file
LISTEN_FILE = STATE_DIR / "listen.json"
LOCK_FILE = STATE_DIR / "testbed.lock"

SLURM_CONF = Path("/etc/slurm/slurm.conf")
SLURMDBD_CONF = SLURM_CONF.parent / "slurmdbd.conf"  # slurmdbd reads it beside slurm.conf
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")

TEST_USER = "hpcuser"
TEST_HOME = Path("/home") / TEST_USER
WORKDIR = TEST_HOME / "hpc-offload"
REST_USER = "slurmrestd"  # slurmrestd refuses to run as root or as SlurmUser
RIMROCK_USER = "rimrock"  # the Rimrock-compatible server (testbed/rimrock)

SSH_PORT = 2222
REST_PORT = 6820
RIMROCK_PORT = 6830
SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
SLURMDBD_PORT = 6819
PARTITION = "debug"
# Job slots the testbed's node offers, in SLURM (CPUs) and Grid Engine (queue slots): more than
# this machine's cores, because test jobs mostly sleep and the test command runs several test
# sessions side by side (a 2-slot node kept one session's jobs pending behind another's).
SLOTS = 8
REST_API_VERSION = "v0.0.38"
DEFAULT_ADDRESS = "127.0.0.1"
# The bridge the local cluster creates (e2e/cluster/config.py BRIDGE_GATEWAY): its pods reach
# this machine there, so the testbed listens on it and profiles point at it when it exists.
CLUSTER_BRIDGE = "10.88.0.1"

# Grid Engine keeps Debian's places, so the /usr/bin client wrappers work with no environment
SGE_ROOT = Path("/var/lib/gridengine")
SGE_CELL = "default"
SGE_QUEUE = "all.q"
SGE_PE = "smp"  # a $pe_slots parallel environment: `-pe smp N` = N slots on one host
SGE_QMASTER_PORT = 6444  # /etc/services sge_qmaster, which the clients look up
SGE_EXECD_PORT = 6445

CLIENT_KEY = SSH_DIR / "id_ed25519"  # the test user's private key, kept by root
KNOWN_HOSTS = SSH_DIR / "known_hosts"


def log_file(name: str) -> Path:
    return LOG_DIR / f"{name}.log"
