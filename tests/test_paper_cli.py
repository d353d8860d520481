"""The paper's command-line form (hpc-connector, 2020): `${VAR}` arguments, the ConfigMap's
`configuration` JSON, job configs inline or in files, the image's entrypoint for `args`
alone, and the Fig. 2 job config run for real on the SLURM testbed (examples/paper/)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from connector.cli import cli
from connector.errors import SpecError
from connector.paper import DEFAULT_CREDENTIALS, backend_configuration, expand, job_config
from webhook.mutation import PROFILE_DIR

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "examples" / "paper"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def fig2() -> tuple[dict[str, Any], dict[str, Any]]:
    """(backend ConfigMap, job ConfigMap) of examples/paper/fig2-configmaps.yaml."""
    backend, job = (d for d in yaml.safe_load_all((PAPER / "fig2-configmaps.yaml").read_text()) if d)
    return backend, job


# --- ${VAR} expansion -------------------------------------------------------------------------

def test_expand_replaces_references_from_the_environment() -> None:
    env = {"BACKEND_NAME": "slurm-ssh", "DIR": "/data"}
    assert expand("${BACKEND_NAME}", env, "--backend") == "slurm-ssh"
    assert expand("${DIR}/job.json", env, "--job-config") == "/data/job.json"
    assert expand("plain", env, "--backend") == "plain"
    assert expand(None, env, "--backend") is None


def test_expand_is_one_pass_and_escapable() -> None:
    env = {"A": "${B}", "B": "never"}
    assert expand("${A}", env, "x") == "${B}"  # a value is taken as written
    assert expand("$${A}", env, "x") == "${A}"  # $${NAME}: a literal ${NAME}
    assert expand("$A and $(A)", env, "x") == "$A and $(A)"  # only the paper's ${NAME} form


def test_expand_leaves_inline_json_alone() -> None:
    """A script inside inline JSON keeps its own ${SLURM_JOB_ID} for the HPC side."""
    text = '{"script": "#!/bin/bash\\necho ${SLURM_JOB_ID} ${UNSET_HERE}"}'
    assert expand(text, {"SLURM_JOB_ID": "local"}, "--job-config") == text
    assert expand("  " + text, {}, "--job-config") == "  " + text


def test_expand_names_an_unset_reference() -> None:
    with pytest.raises(SpecError, match=r"--backend: \$\{BACKEND_NAME\} is not set"):
        expand("${BACKEND_NAME}", {}, "--backend")


def test_an_expanded_value_that_is_json_is_not_expanded_again() -> None:
    conf = '{"host": "h", "workdir": "${NOT_ME}"}'
    assert expand("${BACKEND_CONFIGURATION}", {"BACKEND_CONFIGURATION": conf}, "x") == conf


# --- the config forms -------------------------------------------------------------------------

def test_backend_configuration_inline_file_and_double_encoded(tmp_path: Path) -> None:
    backend, _ = fig2()
    text = backend["data"]["configuration"]
    expected = json.loads(text)
    assert backend_configuration(text) == expected
    path = tmp_path / "configuration"
    path.write_text(text)
    assert backend_configuration(str(path)) == expected
    assert backend_configuration(json.dumps(text)) == expected  # a JSON string holding the object
    assert backend_configuration(None) == {} and backend_configuration("  ") == {}


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "must be a JSON object"),
    ("{nope", "not valid JSON"),
    ("/no/such/configuration", "neither inline JSON nor an existing file"),
])
def test_backend_configuration_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        backend_configuration(text)


def test_job_config_inline_path_and_script_file(tmp_path: Path) -> None:
    _, job = fig2()
    text = job["data"]["job_config"]
    inline = job_config(text)
    assert inline["script"].startswith("#!/bin/bash\n#SBATCH -J gibi230\n")
    as_file = tmp_path / "job_config"
    as_file.write_text(text)
    assert job_config(str(as_file)) == inline
    script = tmp_path / "job.sh"
    script.write_text(inline["script"])
    assert job_config(str(script)) == {"script": inline["script"]}
    with_host = job_config(json.dumps({"script": "#!/bin/sh\ntrue\n", "host": "login"}))
    assert with_host["host"] == "login"


@pytest.mark.parametrize("text, message", [
    ('{"host": "x"}', 'needs "script"'),
    ('{"script": "  "}', 'needs "script"'),
    ('{"script": "#!/bin/sh", "host": 7}', '"host" must be a string'),
    ("[]", "must be a JSON object"),
    ("/no/such/job.json", "neither inline JSON nor an existing file"),
])
def test_job_config_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        job_config(text)


def test_credentials_default_is_where_the_webhook_mounts_a_profile() -> None:
    assert DEFAULT_CREDENTIALS == PROFILE_DIR


# --- the CLI ----------------------------------------------------------------------------------

def _simulate(args: list[str], env: dict[str, str], tmp_path: Path) -> Any:
    term = tmp_path / "termination-log"
    result = CliRunner().invoke(cli, args, env={**env, "HPC_OFFLOAD_TERMINATION_LOG": str(term)})
    return result, json.loads(term.read_text()) if term.exists() else None


def test_cli_expands_the_group_options_before_using_them(tmp_path: Path) -> None:
    """${BACKEND_NAME} reaches the backend lookup as its value (nothing to connect to)."""
    result, term = _simulate(["--backend", "${BACKEND_NAME}", "--backend-conf", "${CONF}", "simulate",
                              "--job-config", '{"script": "#!/bin/sh\\ntrue\\n"}'],
                             {"BACKEND_NAME": "no-such-manager", "CONF": "{}"}, tmp_path)
    assert result.exit_code == 78, result.output
    assert "backend 'no-such-manager' is not installed" in result.output
    assert term["reason"] == "InvalidProfile"


def test_cli_says_which_reference_is_unset(tmp_path: Path) -> None:
    result, term = _simulate(["--backend", "slurm-local", "simulate", "--job-config", "${JOB_CONFIG}"],
                             {}, tmp_path)
    assert result.exit_code == 64, result.output
    assert "--job-config: ${JOB_CONFIG} is not set" in result.output
    assert "Traceback" not in result.output
    assert term["reason"] == "InvalidJobSpec"


def test_cli_rejects_a_bad_monitoring_period_from_the_environment(tmp_path: Path) -> None:
    result, _ = _simulate(["--backend", "slurm-local", "simulate", "--job-config",
                           '{"script": "#!/bin/sh\\n"}', "--monitoring-period", "${PERIOD}"],
                          {"PERIOD": "soon"}, tmp_path)
    assert result.exit_code == 64, result.output
    assert "--monitoring-period" in result.output


# --- the image's entrypoint -------------------------------------------------------------------

def _entrypoint(*args: str) -> subprocess.CompletedProcess[str]:
    """docker/entrypoint.sh with this venv's python and console scripts (the image's are
    under /opt/hpc-offload), run outside the repo so the installed package is what runs."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": path, "HPC_OFFLOAD_PYTHON": sys.executable},
                          cwd="/")


def test_entrypoint_gives_connector_arguments_to_hpc_connector() -> None:
    out = _entrypoint("--backend", "x", "simulate", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: hpc-connector simulate")


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_entrypoint_knows_every_connector_subcommand(command: str) -> None:
    out = _entrypoint(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Usage: hpc-connector {command}")


def test_entrypoint_runs_a_program_as_given() -> None:
    """Admin manifests give `args: [hpc-offload, serve, …]` with no command."""
    out = _entrypoint("hpc-offload", "--help")
    assert out.returncode == 0 and out.stdout.startswith("Usage: hpc-offload"), out.stderr
    out = _entrypoint("sh", "-c", "echo $$")  # exec: the program keeps the entrypoint's pid
    assert out.returncode == 0 and out.stdout.strip().isdigit()


def test_entrypoint_without_arguments_shows_the_admin_help() -> None:
    out = _entrypoint()
    assert out.returncode == 0 and out.stdout.startswith("Usage: hpc-offload"), out.stderr


def test_dockerfile_uses_the_entrypoint_and_the_build_context_has_it() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/usr/local/bin/hpc-offload-entrypoint"]' in dockerfile
    assert "docker/entrypoint.sh /usr/local/bin/hpc-offload-entrypoint" in dockerfile
    assert "!docker/entrypoint.sh" in (REPO / ".dockerignore").read_text().splitlines()
    from e2e.cluster.images import _context_files

    assert "docker/entrypoint.sh" in {rel for rel, _ in _context_files(REPO)}


# --- the paper's manifests --------------------------------------------------------------------

def test_fig3_job_reads_every_reference_from_the_fig2_configmaps() -> None:
    backend, job = fig2()
    manifest = yaml.safe_load((PAPER / "fig3-job.yaml").read_text())
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "command" not in container  # `args` alone: the image's entrypoint starts the connector
    refs = {name for arg in container["args"] for name in re.findall(r"\$\{(\w+)\}", arg)}
    env = {e["name"]: e["valueFrom"]["configMapKeyRef"] for e in container["env"]}
    assert refs == set(env)
    maps = {backend["metadata"]["name"]: backend["data"], job["metadata"]["name"]: job["data"]}
    values = {name: maps[ref["name"]][ref["key"]] for name, ref in env.items()}
    assert values["BACKEND_NAME"] == "slurm-ssh"
    args = [expand(a, values, "arg") for a in container["args"]]
    assert args[args.index("--job-config") + 1] == job["data"]["job_config"]
    (mount,) = container["volumeMounts"]  # the one addition: the credentials Secret
    assert mount["mountPath"] == DEFAULT_CREDENTIALS
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"] and "secret" in volume


def test_fig2_script_keeps_the_papers_directives() -> None:
    _, job = fig2()
    script = job_config(job["data"]["job_config"])["script"]
    for line in ("#SBATCH -J gibi230", '#SBATCH --output="gibi230_segmentation.out"',
                 '#SBATCH --error="gibi230_segmentation.err"'):
        assert line in script.splitlines()


# --- for real, on the SLURM testbed -----------------------------------------------------------

@pytest.mark.slurm
def test_fig2_job_config_runs_as_written_on_the_testbed(testbed_info, tmp_path: Path) -> None:
    """`hpc-connector --backend slurm-ssh --backend-conf JSON simulate --job-config PATH
    --monitoring-period 2 --print-logs`: the job's output, the script's own job name and its
    own output file in the job directory."""
    from testbed import profile

    backend, job = fig2()
    conf = {**json.loads(backend["data"]["configuration"]), "host": "127.0.0.1"}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for key, value in profile.files("slurm-ssh", "127.0.0.1")[1].items():
        (credentials / key).write_text(value)
        (credentials / key).chmod(0o600)
    job_file = tmp_path / "job_config.json"
    job_file.write_text(job["data"]["job_config"])
    proc = subprocess.run(
        [sys.executable, "-m", "connector.cli", "--backend", backend["data"]["name"], "--backend-conf",
         json.dumps(conf), "simulate", "--job-config", str(job_file), "--monitoring-period", "2",
         "--print-logs", "--credentials", str(credentials)],
        capture_output=True, text=True, timeout=240, cwd=REPO,
        env={**os.environ, "HPC_OFFLOAD_TERMINATION_LOG": str(tmp_path / "term")},
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"submitted HPC job (\d+) \(slurm-ssh, [\d.]+s\) in (\S+)", proc.stderr)
    assert match, proc.stderr
    job_id, job_dir = match.groups()
    assert proc.stdout.splitlines() == [  # ${SLURM_JOB_ID} reached the HPC side as written
        f"gibi230: segmenting case NB-0042 as job {job_id} on {os.uname().nodename}",
        "gibi230: segmentation done",
    ]
    assert "gibi230: a diagnostic line on stderr" in proc.stderr
    name = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-O", "Name"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert name == "gibi230"
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                           check=True).stdout
    assert re.search(r"JobName=gibi230\s", shown) and re.search(r"Comment=hpco-job\s", shown)
    assert f"StdOut={job_dir}/gibi230_segmentation.out" in shown
    assert f"StdErr={job_dir}/gibi230_segmentation.err" in shown
    out = Path(job_dir) / "gibi230_segmentation.out"
    assert out.read_text().splitlines() == proc.stdout.splitlines()
    assert (Path(job_dir) / "gibi230_segmentation.err").read_text() == "gibi230: a diagnostic line on stderr\n"
    assert not list(Path(job_dir).glob("slurm-*.out"))
