"""The command lines (issue 14 items 1 and 4): `kubectl hpc` offers the user's commands only,
`hpc-offload` all of them; a base install (no extra) names the extra a command needs, whatever
its arguments; `kubectl hpc shell` builds the `kubectl exec` into the connector."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from hpc_cli.kubectl import plugin
from hpc_cli.lazy import Entry, LazyGroup
from hpc_cli.main import ADMIN_COMMANDS, USER_COMMANDS, cli
from hpc_cli.shell import check_pod, connector_python, exec_argv

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("HPC_OFFLOAD_CACHE", "/var/cache/hpc-offload"))


def commands_listed(group: click.Group) -> list[str]:
    result = CliRunner().invoke(group, ["--help"])
    assert result.exit_code == 0, result.output
    section = result.output.split("Commands:")[1]
    return [line.split()[0] for line in section.strip().splitlines()]


def test_the_kubectl_plugin_offers_the_users_commands_only() -> None:
    assert commands_listed(plugin) == ["jobs", "render", "shell"]
    for admin in ("serve", "certs", "testbed", "e2e", "relay", "chart"):
        result = CliRunner().invoke(plugin, [admin, "--help"])
        assert result.exit_code != 0 and "No such command" in result.output


def test_hpc_offload_keeps_admin_and_developer_commands() -> None:
    assert commands_listed(cli) == sorted({*USER_COMMANDS, *ADMIN_COMMANDS})
    assert {"serve", "certs", "testbed", "e2e", "relay", "chart"} <= set(ADMIN_COMMANDS)
    assert not set(USER_COMMANDS) & set(ADMIN_COMMANDS)


def test_every_command_imports_in_the_full_install() -> None:
    for name in {*USER_COMMANDS, *ADMIN_COMMANDS}:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "not installed" not in result.output


def test_a_missing_module_gives_a_stand_in_that_takes_any_arguments(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "probe_needs_y.py").write_text("import no_such_package_y\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    table = {"render": Entry("hpc_cli.render:render", "Render.", "cli", ("no_such_module_x",)),
             "broken": Entry("probe_needs_y:cmd", "Broken.", "webhook")}
    group = LazyGroup(name="g", commands_table=table)
    for args in (["render", "-f", "job.yaml"], ["render", "--help"], ["render"], ["render", "--x=1", "a", "b"]):
        result = CliRunner().invoke(group, args)
        assert result.exit_code == 1, (args, result.output)
        assert "'render' needs a part that is not installed (no_such_module_x)" in result.output
        assert "pip install 'hpc-offload[cli]'" in result.output
        assert "No such option" not in result.output
    result = CliRunner().invoke(group, ["broken", "-f", "x"])
    assert "(no_such_package_y)" in result.output and "hpc-offload[webhook]" in result.output


def _base_venv() -> Path:
    """A venv with only the base dependencies of pyproject.toml (what `pip install hpc-offload`
    brings), pinned by constraints.txt; made once per dependency list, under the cache."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256(json.dumps([deps, (REPO / "constraints.txt").read_text()]).encode()).hexdigest()[:12]
    venv = CACHE / f"base-venv-{key}"
    if (venv / ".complete").exists():
        return venv
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                          "-c", str(REPO / "constraints.txt"), *deps], capture_output=True, text=True)
    assert pip.returncode == 0, f"cannot make the base venv: {pip.stderr[-2000:]}"
    (venv / ".complete").write_text(key)
    return venv


def _base_run(venv: Path, prog: str, module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a console script's `main` with the repository's code on a base install."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); sys.argv[0] = {prog!r}; "
            f"from {module} import main; main()")
    return subprocess.run([str(venv / "bin" / "python"), "-c", code, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_a_base_install_names_the_missing_extra(tmp_path: Path) -> None:
    """Issue 14 item 1: `pip install hpc-offload` (no extra), then `hpc-offload render -f
    job.yaml` answered "No such option '-f'"; now every argument list gets the extra's name."""
    venv = _base_venv()
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import orjson"], capture_output=True)
    assert probe.returncode != 0, "the base venv must not have the cli extra"
    job = tmp_path / "job.yaml"
    job.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: x}]}\n")
    for prog, module in (("hpc-offload", "hpc_cli.main"), ("kubectl hpc", "hpc_cli.kubectl")):
        for args in (["render", "-f", str(job)], ["render", "--script", "-f", "-"], ["jobs", "-A"]):
            proc = _base_run(venv, prog, module, *args, cwd=tmp_path)
            assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
            assert "needs a part that is not installed" in proc.stderr
            assert "pip install 'hpc-offload[cli]'" in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr and "No such option" not in proc.stderr
    proc = _base_run(venv, "hpc-offload", "hpc_cli.main", "serve", "--bind", "0.0.0.0:1", cwd=tmp_path)
    assert "pip install 'hpc-offload[webhook]'" in proc.stderr
    # what needs no extra works: the help, and the shell (kubectl only) up to looking for kubectl
    assert _base_run(venv, "kubectl hpc", "hpc_cli.kubectl", "--help", cwd=tmp_path).returncode == 0
    proc = _base_run(venv, "kubectl hpc", "hpc_cli.kubectl", "shell", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "-- CMD" in proc.stdout


# --- kubectl hpc shell ---------------------------------------------------------------------------

def offloaded_pod(state: dict[str, Any] | None = None, command: list[str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "train", "annotations": {
            "hpc.offload/backend": "site", "hpc.offload/status": "injected",
            "hpc.offload/job-spec": json.dumps({"container": "main"})}},
        "spec": {"containers": [
            {"name": "main", "command": command or ["/opt/x/bin/python3", "-I", "-m", "connector.cli", "run"]},
            {"name": "sidecar"}]},
        "status": {"containerStatuses": [{"name": "main", "state": state or {"running": {}}}]},
    }


def test_shell_exec_argv() -> None:
    argv = exec_argv(["kubectl", "--context=c"], "train", "main", "/opt/x/bin/python3", True,
                     ["sh", "-c", "echo $HOSTNAME; rm -rf /"], namespace="lab")
    assert argv == ["kubectl", "--context=c", "exec", "-it", "train", "-n", "lab", "-c", "main", "--",
                    "/opt/x/bin/python3", "-I", "-m", "connector.cli", "shell", "--tty",
                    "--", "sh", "-c", "echo $HOSTNAME; rm -rf /"]
    argv = exec_argv(["kubectl"], "p", "c", "/py", False, [])
    assert argv == ["kubectl", "exec", "-i", "p", "-c", "c", "--", "/py", "-I", "-m", "connector.cli",
                    "shell", "--no-tty"]


def test_shell_uses_the_connectors_own_python() -> None:
    assert connector_python(offloaded_pod(), "main") == "/opt/x/bin/python3"
    from webhook.config import WebhookConfig

    odd = offloaded_pod(command=["hpc-connector", "run"])
    assert connector_python(odd, "main") == WebhookConfig().connector_python


@pytest.mark.parametrize(("pod", "container", "words"), [
    ({"metadata": {"name": "train"}}, None, "is not offloaded"),
    (offloaded_pod(), "sidecar", "the HPC job is container main's (-c main)"),
    (offloaded_pod({"waiting": {"reason": "ContainerCreating"}}), None, "not running yet (ContainerCreating)"),
    (offloaded_pod({"terminated": {"exitCode": 0}}), None, "the connector has ended"),
])
def test_shell_refuses_with_clear_words(pod: dict[str, Any], container: str | None, words: str) -> None:
    with pytest.raises(click.ClickException, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_pod(pod, "train", container)


def test_shell_picks_the_offloaded_container() -> None:
    assert check_pod(offloaded_pod(), "train", None) == "main"
    assert check_pod(offloaded_pod(), "train", "main") == "main"
