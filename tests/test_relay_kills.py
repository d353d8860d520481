"""Connector SIGKILLs at random moments (issue 11, item 5) at a suite's size: `bench/faults.py`'s
kills scenario — real connectors in `relay: required` mode through a real relay to the
testbed's SLURM, each killed whatever it was doing (submitting, registering, following,
cancelling) and restarted on the same state dir as the kubelet restarts a container. The bench
runs the full counts (100 kills across 20 pods); here 3 pods and 8 kills.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm]
REPO = Path(__file__).resolve().parent.parent


def test_connectors_killed_at_random_moments_lose_no_job_and_submit_or_print_nothing_twice(testbed_info, tmp_path):
    rows_file = tmp_path / "rows.json"
    run = subprocess.run(
        [sys.executable, "bench/faults.py", "--only", "kills", "--connectors", "3", "--kills", "8",
         "--seconds", "20", "--oversubscribe", "none", "--seed", "5", "--json", str(rows_file)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    [row] = json.loads(rows_file.read_text())
    assert "8 SIGKILLs + restarts" in row["note"], run.stdout  # every kill hit a live connector
    assert (row["duplicates"], row["lost"], row["lines_doubled"]) == (0, 0, 0), run.stdout
    # lines are printed at most once (docs/relay.md): a kill landing between the saved offset and
    # the print loses that one chunk, a line here (once in ~230 kills; CI saw it once)
    assert row["lines_lost"] <= 1, run.stdout
    assert row["seconds"] is not None, run.stdout  # every connector ended by itself
