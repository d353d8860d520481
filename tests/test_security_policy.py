"""Issue 12, policy bypasses: items 6 (verbatim scripts), 8 (counting), 9 (empty lists).

Each test drives the webhook's own `mutate()` (the code `handle_review` runs) with a pod as
a hostile tenant would write it, and asserts the answer the API server would get.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from webhook.annotations import JOB_SPEC, PREFIX, AdmissionDenied
from webhook.config import WebhookConfig
from webhook.mutation import mutate
from webhook.policy import Policy, PolicyError
from webhook.sbatch import ScriptError, parse_options, script_components, split_arguments

CONFIG = WebhookConfig()

LIMITS = """
rules:
- name: lab
  namespaces: [lab]
  maxTime: "01:00:00"
  maxGpus: 2
  maxNodes: 1
  partitions: [short, gpu]
  accounts: [lab-grant]
  qos: [normal]
  defaults: {partition: short, account: lab-grant}
"""
LIMITS_ONLY = """
rules:
- name: lab
  namespaces: [lab]
  maxTime: "01:00:00"
  maxGpus: 2
  maxNodes: 1
"""


def pod(**annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {f"{PREFIX}backend": "site",
                                     **{PREFIX + k.replace("_", "-"): v
                                        for k, v in annotations.items()}}},
        "spec": {"containers": [{"name": "main", "image": "registry.example.org/app:1",
                                 "command": ["run"]}]},
    }


def admit(p: dict[str, Any], policy: str = LIMITS) -> dict[str, Any]:
    result = mutate(p, "lab", CONFIG, Policy.from_yaml(policy))
    return json.loads(result["metadata"]["annotations"][JOB_SPEC])


def denial(p: dict[str, Any], policy: str = LIMITS) -> str:
    with pytest.raises(AdmissionDenied) as info:
        admit(p, policy)
    assert info.value.code == 403, info.value.message
    assert info.value.message.startswith('policy rule "lab": ')
    return info.value.message


def script(*lines: str) -> str:
    return "\n".join(("#!/bin/bash", *lines, "srun hostname", ""))


# --- item 6: a verbatim script cannot escape the policy ------------------------------------

def test_item6_the_issue_script_is_denied_naming_line_and_rule() -> None:
    """Item 6: the reported script (UNLIMITED time, 64 nodes, 8 GPUs, another account) was
    submitted as written; each of its lines is now refused at admission, naming the line."""
    hostile = script("#SBATCH --time=UNLIMITED --nodes=64 --gres=gpu:8 "
                     "--account=someone-elses-grant")
    message = denial(pod(script=hostile), LIMITS_ONLY)
    assert "hpc.offload/script line 2" in message and "UNLIMITED" in message
    assert "exceeds the maximum 01:00:00" in message
    for line, expected in (
        ("#SBATCH --time=2:00:00", "--time=2:00:00 exceeds the maximum 01:00:00"),
        ("#SBATCH -t 1-0", "exceeds the maximum"),
        ("#SBATCH --time=01:00:00 --nodes=64", "asks for 64 nodes (from --nodes=64"),
        ("#SBATCH -t 30 -N 2-64", "asks for 64 nodes"),
        ("#SBATCH -t 30 --gres=gpu:8", "asks for 8 GPUs"),
        ("#SBATCH -t 30 -G a100:3", "asks for 3 GPUs"),
    ):
        message = denial(pod(script=script(line)), LIMITS_ONLY)
        assert "line 2" in message and expected in message, (line, message)


def test_item6_sbatch_reading_tricks_are_seen_through() -> None:
    """Item 6: the ways sbatch reads a directive (abbreviated long options, `--opt value`,
    short options with attached values, quotes, `#SLURM`, no space after the magic word) all
    count."""
    for line in ("#SBATCH --tim=UNLIMITED --time-min=1",  # ambiguous: sbatch refuses it too
                 "#SBATCH --time UNLIMITED",
                 "#SBATCH -tUNLIMITED",
                 "#SBATCH -Ht UNLIMITED",
                 '#SBATCH "--time=UNLIMITED"',
                 "#SBATCH --time=UNLIMITED # a comment",
                 "#SLURM --time=UNLIMITED",
                 "#SBATCH--time=UNLIMITED",
                 "#SBATCH --time=infinite",
                 "#SBATCH --gpus-per-n=8 -t 5",
                 "#SBATCH -t 5 --nodelist=gpu[001-064]",
                 "#SBATCH -t 5 -w gpu001",
                 "#SBATCH -t 5 --exclude=n1"):
        denial(pod(script=script(line)), LIMITS_ONLY)


def test_item6_directives_after_the_first_command_are_not_read() -> None:
    """Item 6: sbatch stops at the first command; so does the check (a heredoc writing another
    script is not this job's request)."""
    text = "#!/bin/bash\n#SBATCH -t 30\n\n# comment\nhostname\n#SBATCH --time=UNLIMITED\n"
    admit(pod(script=text), LIMITS_ONLY)


def test_item6_pinned_account_partition_and_qos_hold_for_scripts() -> None:
    """Item 6: under pinned partitions/accounts/qos a script must name allowed ones."""
    ok = script("#SBATCH -t 30 -p gpu -A lab-grant --qos=normal")
    admit(pod(script=ok))
    message = denial(pod(script=script("#SBATCH -t 30 -p gpu --account=someone-elses-grant "
                                       "--qos=normal")))
    assert 'line 2' in message and "account 'someone-elses-grant' is not allowed" in message
    assert "allowed: lab-grant" in message
    assert "partition 'long' is not allowed" in denial(pod(script=script(
        "#SBATCH -t 30 -p short,long -A lab-grant --qos=normal")))
    missing = denial(pod(script=script("#SBATCH -t 30 -p gpu --qos=normal")))
    assert "sets no --account" in missing and "lab-grant" in missing


def test_item6_a_script_must_state_what_the_policy_limits() -> None:
    """Item 6: without --time the partition's default applies, which may exceed maxTime; with
    several tasks and no --nodes SLURM may spread them over many nodes."""
    assert "sets no --time" in denial(pod(script=script("#SBATCH -N 1")), LIMITS_ONLY)
    assert "set --nodes" in denial(pod(script=script("#SBATCH -t 5 --ntasks=256")), LIMITS_ONLY)
    admit(pod(script=script("#SBATCH -t 5 -N 1 --ntasks=2 --gpus-per-task=1")), LIMITS_ONLY)


def test_item6_unconstrained_options_and_rules_leave_scripts_alone() -> None:
    """Item 6: nothing the policy does not constrain is refused; a rule without limits does
    not read scripts at all."""
    text = script("#SBATCH -t 30 --mem=4G --output=out.%j --mail-type=END -J name",
                  "#SBATCH --export=ALL --constraint=avx2 --exclusive")
    admit(pod(script=text), LIMITS_ONLY)
    free = "rules:\n- name: lab\n  namespaces: [lab]\n"
    admit(pod(script=script("#SBATCH --time=UNLIMITED --nodes=64 --bogus-option")), free)


def test_item6_heterogeneous_jobs_are_counted_per_component_and_summed() -> None:
    """Item 6: `#SBATCH hetjob` starts a component; limits hold for the sum."""
    text = script("#SBATCH -t 30 -N 1 --gpus-per-node=1", "#SBATCH hetjob",
                  "#SBATCH -t 30 -N 1 --gpus-per-node=2")
    message = denial(pod(script=text), LIMITS_ONLY)
    assert "asks for 2 nodes" in message or "asks for 3 GPUs" in message
    assert "time" in denial(pod(script=script("#SBATCH -t 30", "#SBATCH hetjob",
                                              "#SBATCH -t UNLIMITED")), LIMITS_ONLY)


def test_item6_sbatch_argument_splitting_matches_sbatch() -> None:
    """Item 6: the line splitting of src/sbatch/opt.c get_argument()."""
    assert split_arguments(' --a=1 "-b 2" \\"c # d', "s") == ["--a=1", "-b 2", '"c']
    assert split_arguments(" --a=1 hetjob --b", "s") == ["--a=1"]
    assert split_arguments(' --a "" --b', "s") == ["--a"]
    with pytest.raises(ScriptError, match="unmatched"):
        split_arguments(' --a="x', "s")
    names = [(d.name, d.value) for d in parse_options(
        [("-HN2", "s"), ("--gpus-per-t", "s"), ("3", "s"), ("--exclusive", "s"),
         ("--tasks-per-node=4", "s")])]
    assert names == [("hold", None), ("nodes", "2"), ("gpus-per-task", "3"),
                     ("exclusive", None), ("ntasks-per-node", "4")]
    parts = script_components("#!/bin/sh\n#SBATCH -N1\n#SBATCH hetjob\n#SBATCH -N2\ntrue\n")
    assert [[d.value for d in c.directives] for c in parts] == [["1"], ["2"]]


# --- item 8: every option that determines GPUs and nodes is counted -------------------------

def test_item8_the_issue_combinations_are_counted() -> None:
    """Item 8: with maxGpus 2 and maxNodes 1 these were admitted as 1 GPU."""
    message = denial(pod(sbatch_args="--ntasks-per-node=64 --gpus-per-task=1"), LIMITS_ONLY)
    assert "asks for 64 GPUs" in message and "--gpus-per-task=1" in message
    message = denial(pod(sbatch_args="--nodelist=gpu[001-064] --gpus-per-node=1"), LIMITS_ONLY)
    assert "--nodelist" in message and "cannot be counted" in message
    assert "--exclude" in denial(pod(sbatch_args="--exclude=n1"), LIMITS_ONLY)


def test_item8_counting_rules() -> None:
    """Item 8: gres per node × nodes, gpus-per-node × nodes, gpus-per-task × tasks where tasks
    come from ntasks or nodes × ntasks-per-node."""
    policy = LIMITS_ONLY.replace("maxGpus: 2", "maxGpus: 4").replace("maxNodes: 1", "maxNodes: 2")
    assert "asks for 6 GPUs" in denial(pod(gpus="3", nodes="2"), policy)
    assert "asks for 6 GPUs" in denial(pod(ntasks="3", sbatch_args="--gpus-per-task=2"), policy)
    assert "asks for 8 GPUs" in denial(
        pod(nodes="2", sbatch_args="--ntasks-per-node=2 --gpus-per-task=2"), policy)
    assert "asks for 6 GPUs" in denial(pod(nodes="2", sbatch_args="--gpus-per-node=a100:3"),
                                       policy)
    admit(pod(nodes="2", sbatch_args="--gpus-per-node=2"), policy)
    admit(pod(gpus="a100:4"), policy)


def test_item8_nodes_are_pinned_for_rendered_jobs_under_node_limits() -> None:
    """Item 8: a rendered job naming no nodes gets nodes: 1 under maxNodes/maxGpus, so SLURM
    cannot spread its tasks over more nodes than were counted."""
    spec = admit(pod(ntasks="8"), LIMITS_ONLY)
    assert spec["resources"]["nodes"] == 1


# --- item 9: empty lists fail closed, at load ----------------------------------------------

@pytest.mark.parametrize("key", ["profiles", "namespaces", "runtimes", "images", "partitions",
                                 "accounts", "qos"])
def test_item9_empty_lists_are_refused_at_load(key: str) -> None:
    """Item 9: `profiles: []` allowed any profile and `namespaces: []` matched every
    namespace; an empty list is now an invalid policy with a clear message."""
    with pytest.raises(PolicyError, match=f"{key}: an empty list"):
        Policy.from_yaml(f"rules:\n- name: r\n  {key}: []\n")


def test_item9_the_issue_policies_no_longer_fail_open() -> None:
    """Item 9: the two reported policies."""
    for text in ("rules:\n- name: r\n  profiles: []\n",
                 "unmatched: deny\nrules:\n- name: r\n  namespaces: []\n"):
        with pytest.raises(PolicyError, match="omit the key"):
            Policy.from_yaml(text)


GRIDENGINE = LIMITS.replace("  defaults:", "  managers: [gridengine]\n  defaults:")


def test_item6_grid_engine_directives_are_held_to_the_rule() -> None:
    """Item 6, Grid Engine: under `managers: [gridengine]` a script's `#$` lines are read
    (h_rt, -q, -P, GPU resources × slots) the same way."""
    ok = "#!/bin/bash\n#$ -l h_rt=0:30:00 -q gpu -P lab-grant\n#$ -pe smp 2 -l gpu=1\nhostname\n"
    admit(pod(script=ok), GRIDENGINE)
    for text, expected in (
        (ok.replace("h_rt=0:30:00", "h_rt=INFINITY"), "h_rt=INFINITY exceeds the maximum"),
        (ok.replace("h_rt=0:30:00", "h_rt=7200"), "h_rt=7200 exceeds the maximum 01:00:00"),
        (ok.replace(" -l h_rt=0:30:00", ""), "sets no hard run time"),
        (ok.replace("h_rt=0:30:00", "s_rt=0:30:00 -soft -l h_rt=0:30:00"), "sets no hard run"),
        (ok.replace("-q gpu", "-q long.q@node1"), "partition 'long.q' is not allowed"),
        (ok.replace("-P lab-grant", "-P other"), "account 'other' is not allowed"),
        (ok.replace("-pe smp 2", "-pe smp 8"), "asks for 8 GPUs"),
        (ok.replace("-pe smp 2", "-t 1-100"), "-t (a job array) cannot be checked"),
    ):
        message = denial(pod(script=text), GRIDENGINE)
        assert expected in message, (text, message)
        assert "hpc.offload/script" in message


def test_item6_managers_key_is_checked() -> None:
    """Item 6: the rule says whose directives it reads; an unknown manager is a load error."""
    with pytest.raises(PolicyError, match="'pbs' is not one of slurm, gridengine"):
        Policy.from_yaml("rules:\n- name: r\n  managers: [pbs]\n")
    both = Policy.from_yaml("rules:\n- name: r\n  managers: [slurm, gridengine]\n"
                            "  maxTime: '60'\n").rules[0]
    assert both.managers == ("slurm", "gridengine")
