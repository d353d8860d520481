"""`hpc-offload render`: manifests in, mutated manifests (or scripts) out; denials exit 1."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from hpc_cli.main import cli
from hpc_cli.render import render

GOLDEN = Path(__file__).parent / "golden" / "mutation"


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(render, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def test_render_matches_golden() -> None:
    code, out, _ = run("-f", str(GOLDEN / "neuroblastoma-job" / "input.yaml"))
    assert code == 0
    assert out == (GOLDEN / "neuroblastoma-job" / "output.yaml").read_text()


def test_script_matches_golden() -> None:
    code, out, _ = run("-f", str(GOLDEN / "neuroblastoma-job" / "input.yaml"), "--script")
    assert code == 0
    assert out == (GOLDEN / "neuroblastoma-job" / "job.sh").read_text()


def test_stdin_several_files_and_passthrough() -> None:
    text = (GOLDEN / "plain-pod" / "input.yaml").read_text()
    code, out, _ = run("-f", "-", "-f", str(GOLDEN / "deployment-and-passthrough" /
                                             "input.yaml"), input=text)
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["Pod", "ConfigMap", "Deployment", "Pod"]
    assert docs[1]["data"]["name"] == "slurm-ssh"
    assert docs[3]["spec"]["containers"][0]["image"] == "nginx:1.25"


def test_several_scripts_are_labelled() -> None:
    code, out, _ = run("-f", str(GOLDEN / "plain-pod" / "input.yaml"),
                       "-f", str(GOLDEN / "cronjob" / "input.yaml"), "--script")
    assert code == 0
    assert "# ---- Pod default/hello, container hello\n#!/bin/bash" in out
    assert "# ---- CronJob ops/nightly, container report\n#!/bin/bash" in out


def test_bad_annotation_exits_with_the_webhook_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n  annotations:\n"
        "    hpc.offload/backend: c\n    hpc.offload/runtime: docker\n"
        "spec:\n  containers: [{name: a, image: b}]\n")
    code, out, err = run("-f", str(path))
    assert code == 1 and out == ""
    assert err == ('Error: Pod default/x would be denied (400): hpc.offload/runtime: "docker" '
                   "is not allowed; use one of singularity, apptainer, charliecloud, podman, "
                   "enroot, none\n")
    assert "Traceback" not in err


def test_policy_and_namespace(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules: [{name: only-lab, namespaces: [lab]}]\n")
    manifest = str(GOLDEN / "plain-pod" / "input.yaml")
    code, _, err = run("-f", manifest, "--policy", str(policy))
    assert code == 1 and "would be denied (403): policy: no rule admits namespace" in err
    code, out, _ = run("-f", manifest, "--policy", str(policy), "-n", "lab")
    assert code == 0 and "hpc.offload/status: injected" in out


def test_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("connector_image: registry.example.org/hpc-offload:9\n")
    code, out, _ = run("-f", str(GOLDEN / "plain-pod" / "input.yaml"), "--config", str(config))
    assert code == 0 and "image: registry.example.org/hpc-offload:9" in out


def test_errors_are_short(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [\n")
    code, _, err = run("-f", str(broken))
    assert code == 1 and "not valid YAML" in err
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules: [{bogus: 1}]\n")
    code, _, err = run("-f", str(GOLDEN / "plain-pod" / "input.yaml"), "--policy", str(policy))
    assert code == 1 and "unknown key 'bogus'" in err
    code, _, err = run("-f", str(GOLDEN / "deployment-and-passthrough" / "input.yaml"),
                       "-f", str(GOLDEN / "plain-pod" / "input.yaml"), "--script")
    assert code == 0
    code, _, err = run("-f", "-", "--script", input="apiVersion: v1\nkind: Service\n")
    assert code == 1 and "no offloaded pod" in err


def test_misplaced_annotation_warns(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: j\n  annotations:\n"
        "    hpc.offload/backend: c\nspec:\n  template:\n    spec:\n"
        "      containers: [{name: a, image: b}]\n")
    code, out, err = run("-f", str(path))
    assert code == 0 and "hpc.offload/status" not in out
    assert "warning: Job j: hpc.offload/backend on the Job's own metadata have no effect; " \
           "put them on spec.template.metadata.annotations" in err


def test_mounted_as_hpc_offload_render() -> None:
    result = CliRunner().invoke(cli, ["render", "-f", str(GOLDEN / "plain-pod" / "input.yaml")])
    assert result.exit_code == 0 and "connector.cli" in result.stdout
