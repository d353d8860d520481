"""The Rimrock-compatible server, for real: HTTP to the daemon `testbed up` starts, which
submits to the testbed's SLURM over SSH. Checks the routes, fields, statuses and quirks that
testbed/rimrock/__init__.py lists from Rimrock's source.

Needs root (the testbed); `pytest -m slurm`.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(__import__("os").geteuid() != 0, reason="the testbed needs root"),
]

WORKDIR = "/home/hpcuser/rimrock-tests"


@pytest.fixture(scope="module")
def tb():
    from testbed import api

    return api.ensure_up()


@pytest.fixture(scope="module")
def server(tb):
    from testbed.rimrock import service

    return service


@pytest.fixture(scope="module")
def proxy(server) -> str:
    return server.proxy()


@pytest.fixture(scope="module")
def api_(server, proxy):
    return Client(server.url(), proxy, server.login_host())


class Client:
    """Rimrock's API as a client uses it (the proxy in the PROXY header)."""

    def __init__(self, url: str, proxy: str, host: str) -> None:
        self.url, self.host = url, host
        self.http = requests.Session()
        self.http.headers["PROXY"] = base64.b64encode(proxy.encode()).decode()
        self.submitted: list[str] = []

    def submit(self, script: str, tag: str | None = None, workdir: str | None = WORKDIR,
               **extra: object) -> requests.Response:
        body = {"host": self.host, "working_directory": workdir, "script": script, "tag": tag,
                **extra}
        r = self.http.post(f"{self.url}/api/jobs", json=body, timeout=30)
        if r.status_code == 201:
            self.submitted.append(r.json()["job_id"])
        return r

    def job(self, job_id: str) -> requests.Response:
        return self.http.get(f"{self.url}/api/jobs/{job_id}", timeout=30)

    def status(self, job_id: str) -> str:
        r = self.job(job_id)
        assert r.status_code == 200, r.text
        return r.json()["status"]

    def wait(self, job_id: str, wanted: set[str], timeout: float = 90) -> list[str]:
        """Poll until one of `wanted`; return every status seen, in order, deduplicated."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(job_id)
            if not seen or seen[-1] != status:
                seen.append(status)
            if status in wanted:
                return seen
            time.sleep(0.3)
        raise AssertionError(f"{job_id}: never {wanted}; saw {seen}")


@pytest.fixture(autouse=True)
def _cancel_leftovers(api_):
    yield
    for job_id in api_.submitted:
        subprocess.run(["scancel", job_id.split(".")[0]], check=False, capture_output=True)
    api_.submitted.clear()


def slurm_state(job_id: str) -> str | None:
    from testbed import api

    info = api.job_info(int(job_id.split(".")[0]))
    return None if info is None else info["JobState"]


def wait_slurm(job_id: str, states: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = slurm_state(job_id)
        if state in states:
            return state
        time.sleep(0.2)
    raise AssertionError(f"SLURM never showed {job_id} in {states} (last {state})")


SLEEPER = "#!/bin/bash\nsleep 300\n"


# --- submit and status ---------------------------------------------------------------------

def test_submit_answers_201_with_rimrocks_fields(api_, server):
    tag = f"t-{uuid.uuid4().hex[:8]}"
    r = api_.submit("#!/bin/bash\necho hello\n", tag=tag)
    assert r.status_code == 201, r.text
    job = r.json()
    assert set(job) == {"job_id", "stdout_path", "stderr_path", "status", "tag"}
    assert job["status"] == "QUEUED" and job["tag"] == tag
    number, host = job["job_id"].split(".", 1)
    assert number.isdigit() and host == server.login_host()
    # `<plgdata>/download/<absolute path>`: Rimrock's double slash
    assert job["stdout_path"] == f"{server.url()}/download/{WORKDIR}/slurm-{number}.out"
    assert "/download//home/" in job["stdout_path"]
    assert slurm_state(job["job_id"]) is not None  # a real SLURM job
    scripts = list(Path(WORKDIR).glob("script-*.sh"))  # uploaded as Rimrock names it
    assert any(p.read_text() == "#!/bin/bash\necho hello\n" for p in scripts)


def test_finished_job_goes_queued_running_finished_and_gets_history(api_):
    job = api_.submit("#!/bin/bash\nsleep 3\necho done\n").json()
    seen = api_.wait(job["job_id"], {"FINISHED"})
    assert seen[0] in ("QUEUED", "RUNNING") and "RUNNING" in seen and seen[-1] == "FINISHED"
    assert set(seen) <= {"QUEUED", "RUNNING", "FINISHED"}
    info = api_.job(job["job_id"]).json()
    assert info["nodes"] == "1" and info["cores"].isdigit()
    assert info["start_time"] <= info["end_time"]
    assert api_.http.get(job["stdout_path"], timeout=30).content == b"done\n"


def test_failed_job_reads_error_while_slurm_lists_it(api_):
    job = api_.submit("#!/bin/bash\necho bad\nexit 7\n").json()
    seen = api_.wait(job["job_id"], {"ERROR", "FINISHED"})
    assert seen[-1] == "ERROR"
    assert slurm_state(job["job_id"]) == "FAILED"
    time.sleep(1)
    assert api_.status(job["job_id"]) == "ERROR"  # not final in Rimrock, but SLURM still has it


def test_cancelled_outside_rimrock_reads_running(api_):
    job = api_.submit(SLEEPER).json()
    api_.wait(job["job_id"], {"RUNNING"})
    subprocess.run(["scancel", job["job_id"].split(".")[0]], check=True)
    wait_slurm(job["job_id"], {"CANCELLED"})
    for _ in range(3):  # the status script maps CANCELLED to RUNNING
        assert api_.status(job["job_id"]) == "RUNNING"
        time.sleep(0.3)


def test_job_missing_from_the_queue_reads_finished(api_, server):
    """SLURM keeps an ended job for MinJobAge (an hour here), so the job that has left the
    queue is a record in the server's table whose SLURM id SLURM no longer knows."""
    from testbed.rimrock.store import Job, Store

    gone = f"{99_000_000 + uuid.uuid4().int % 900_000}.{server.login_host()}"
    assert slurm_state(gone) is None
    store = Store(server.DB)
    store.save(Job(None, gone, "RUNNING", f"{WORKDIR}/x.out", f"{WORKDIR}/x.out", "hpcuser",
                   server.login_host(), "gone"))
    try:
        assert api_.status(gone) == "FINISHED"
        listed = api_.http.get(f"{api_.url}/api/jobs", params={"tag": "gone"}, timeout=30).json()
        assert [j["status"] for j in listed if j["job_id"] == gone] == ["FINISHED"]
    finally:
        found = store.by_job_id(gone)
        if found is not None:
            store.delete(found)


def test_tag_lookup_lists_exactly_the_tagged_jobs(api_):
    tag, other = f"pod-{uuid.uuid4()}", f"pod-{uuid.uuid4()}"
    ids = {api_.submit("#!/bin/bash\ntrue\n", tag=tag).json()["job_id"] for _ in range(2)}
    api_.submit("#!/bin/bash\ntrue\n", tag=other)
    r = api_.http.get(f"{api_.url}/api/jobs", params={"tag": tag}, timeout=30)
    assert r.status_code == 200
    assert {j["job_id"] for j in r.json()} == ids
    assert all(j["tag"] == tag for j in r.json())
    none = api_.http.get(f"{api_.url}/api/jobs", params={"tag": f"pod-{uuid.uuid4()}"}, timeout=30)
    assert none.status_code == 200 and none.json() == []


# --- abort and delete ----------------------------------------------------------------------

def test_abort_cancels_and_reads_aborted(api_):
    job = api_.submit(SLEEPER).json()
    api_.wait(job["job_id"], {"RUNNING"})
    r = api_.http.put(f"{api_.url}/api/jobs/{job['job_id']}", json={"action": "abort"}, timeout=30)
    assert r.status_code == 204 and r.content == b""
    assert wait_slurm(job["job_id"], {"CANCELLED"}) == "CANCELLED"
    for _ in range(3):  # ABORTED is final: SLURM's CANCELLED (→ RUNNING) does not undo it
        assert api_.status(job["job_id"]) == "ABORTED"
        time.sleep(0.3)


def test_other_actions_do_nothing(api_):
    job = api_.submit(SLEEPER).json()
    r = api_.http.put(f"{api_.url}/api/jobs/{job['job_id']}", json={"action": "hold"}, timeout=30)
    assert r.status_code == 204
    assert api_.wait(job["job_id"], {"RUNNING"})[-1] == "RUNNING"


def test_delete_cancels_and_forgets(api_):
    job = api_.submit(SLEEPER).json()
    api_.wait(job["job_id"], {"RUNNING", "QUEUED"})
    assert api_.http.delete(f"{api_.url}/api/jobs/{job['job_id']}", timeout=30).status_code == 204
    wait_slurm(job["job_id"], {"CANCELLED"})
    r = api_.job(job["job_id"])
    assert r.status_code == 404
    assert r.json() == {"exit_code": 0, "standard_output": None, "error_output": None,
                        "status": "ERROR",
                        "error_message": f"Job with {job['job_id']} id does not exist"}


def test_abort_of_an_unknown_job_is_404(api_):
    r = api_.http.put(f"{api_.url}/api/jobs/1.nowhere", json={"action": "abort"}, timeout=30)
    assert r.status_code == 404 and r.json()["status"] == "ERROR"


# --- output --------------------------------------------------------------------------------

def test_output_download_whole_and_by_range(api_):
    script = ("#!/bin/bash\n#SBATCH --error=err-%j.txt\n"
              "echo line-one\necho line-two\necho oops >&2\n")
    job = api_.submit(script).json()
    number = job["job_id"].split(".")[0]
    assert job["stderr_path"].endswith(f"{WORKDIR}/err-{number}.txt")
    api_.wait(job["job_id"], {"FINISHED"})
    whole = api_.http.get(job["stdout_path"], timeout=30)
    assert whole.status_code == 200 and whole.content == b"line-one\nline-two\n"
    assert whole.headers["Accept-Ranges"] == "bytes"
    part = api_.http.get(job["stdout_path"], headers={"Range": "bytes=9-"}, timeout=30)
    assert part.status_code == 206 and part.content == b"line-two\n"
    assert part.headers["Content-Range"] == "bytes 9-17/18"
    past = api_.http.get(job["stdout_path"], headers={"Range": "bytes=18-"}, timeout=30)
    assert past.status_code == 416 and past.headers["Content-Range"] == "bytes */18"
    assert api_.http.get(job["stderr_path"], timeout=30).content == b"oops\n"
    missing = api_.http.get(f"{api_.url}/download/{WORKDIR}/no-such-file", timeout=30)
    assert missing.status_code == 404
    assert requests.get(job["stdout_path"], timeout=30).status_code == 403  # no proxy


# --- Rimrock's command API and PLGData's upload --------------------------------------------

def test_process_runs_one_command_as_the_user(api_):
    r = api_.http.post(f"{api_.url}/api/process", json={
        "host": api_.host, "command": "id -un; pwd; echo err >&2; exit 3", "working_directory": "/tmp"},
        timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"exit_code": 3, "standard_output": "hpcuser\n/tmp", "error_output": "err\n",
                        "status": "OK", "error_message": None}
    no_host = api_.http.post(f"{api_.url}/api/process", json={"command": "true"}, timeout=30)
    assert no_host.status_code == 422 and no_host.json()["status"] == "ERROR"
    assert requests.post(f"{api_.url}/api/process", json={"host": api_.host, "command": "id"},
                         timeout=30).status_code == 403


def test_upload_writes_a_0600_file_as_the_user(api_):
    import pwd
    import stat

    directory = f"{WORKDIR}/upload-{uuid.uuid4().hex[:8]}/deeper"
    r = api_.http.post(f"{api_.url}/upload/{directory}", files={"file": ("job.env", b"export A=1\n")},
                       data={"recursive": "true", "locale": "en"}, timeout=30)
    assert r.status_code == 200, r.text
    written = Path(directory) / "job.env"
    info = written.stat()
    assert written.read_bytes() == b"export A=1\n"
    assert stat.S_IMODE(info.st_mode) == 0o600 and pwd.getpwuid(info.st_uid).pw_name == "hpcuser"
    bad_name = api_.http.post(f"{api_.url}/upload/{directory}", files={"file": ("..", b"x")}, timeout=30)
    assert bad_name.status_code == 400
    anonymous = requests.post(f"{api_.url}/upload/{directory}", files={"file": ("other", b"x")}, timeout=30)
    assert anonymous.status_code == 403 and not (Path(directory) / "other").exists()


# --- errors --------------------------------------------------------------------------------

def test_sbatch_refusal_is_500_with_the_scripts_exit_code(api_):
    r = api_.submit("#!/bin/bash\n#SBATCH --partition=no-such-partition\ntrue\n")
    assert r.status_code == 500
    body = r.json()
    assert body["status"] == "ERROR" and body["exit_code"] == 22
    assert body["error_message"] == "Submission of new job failed"
    assert "sbatch error!" in body["standard_output"] and "partition" in body["standard_output"]


def test_bad_requests_are_500s_as_in_rimrock(api_):
    unknown_host = api_.http.post(f"{api_.url}/api/jobs", json={"host": "nowhere.example",
                                                                 "script": "true"}, timeout=30)
    assert unknown_host.status_code == 500
    assert "UnknownHostException: nowhere.example" in unknown_host.json()["error_message"]
    no_script = api_.http.post(f"{api_.url}/api/jobs", json={"host": api_.host}, timeout=30)
    assert no_script.status_code == 500 and no_script.json()["error_message"] is None
    not_json = api_.http.post(f"{api_.url}/api/jobs", data="host=x",
                              headers={"Content-Type": "text/plain"}, timeout=30)
    assert not_json.status_code == 500 and "not supported" in not_json.json()["error_message"]
    assert api_.job("12345678.nowhere").status_code == 404


def test_submit_timeout_is_408(tb, server, tmp_path, proxy):
    """The same server code with a 1 ms command limit: the first SSH command overruns it."""
    import dataclasses

    from testbed.rimrock.app import Config, create_app

    config = Config.load(server.CONFIG)
    config = dataclasses.replace(config, db=tmp_path / "jobs.sqlite",
                                 node=dataclasses.replace(config.node, timeout=0.001))
    client = create_app(config).test_client()
    r = client.post("/api/jobs", json={"host": server.login_host(), "script": "true",
                                        "working_directory": WORKDIR},
                    headers={"PROXY": base64.b64encode(proxy.encode()).decode()})
    assert r.status_code == 408
    assert r.json["error_message"] == "Unable to submit new job because of timeout"
    assert r.json["exit_code"] == -1


# --- the proxy -----------------------------------------------------------------------------

def _foreign_proxy(lifetime: float = 3600, expired: bool = False) -> tuple[str, str]:
    """(a proxy for the same DN from a CA the server does not trust, an expired own one)."""
    from testbed.rimrock import pki, service

    ca, ca_key = pki.make_ca("some other CA")
    user, user_key = pki.make_user(ca, ca_key, "hpcuser")
    foreign = pki.make_proxy(user, user_key, lifetime)
    own_user = pki.load_certificates((service.CA_DIR / "user-hpcuser.pem").read_bytes())[0]
    own_key = pki.load_key((service.CA_DIR / "user-hpcuser.key").read_bytes())
    old = pki.make_proxy(own_user, own_key, 60,
                         not_before=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    return foreign, old


def test_bad_proxies_are_refused_with_403_and_nothing_is_submitted(api_, server):
    from testbed import layout

    foreign, expired = _foreign_proxy()
    queued_before = subprocess.run(["squeue", "-h", "-u", "hpcuser", "-o", "%A"],
                                   capture_output=True, text=True, check=True).stdout.split()
    body = {"host": api_.host, "script": "#!/bin/bash\ntrue\n", "working_directory": WORKDIR}
    cases = {
        "missing": None,
        "not base64": "%%%not-base64%%%",
        "not a proxy": base64.b64encode(b"hello").decode(),
        "untrusted CA": base64.b64encode(foreign.encode()).decode(),
        "expired": base64.b64encode(expired.encode()).decode(),
    }
    for name, header in cases.items():
        headers = {} if header is None else {"PROXY": header}
        r = requests.post(f"{api_.url}/api/jobs", json=body, headers=headers, timeout=30)
        assert r.status_code == 403, (name, r.text)
        reply = r.json()
        assert reply["status"] == 403 and reply["message"] == "Access Denied", name
        assert reply["path"] == "/api/jobs"
        if name in ("untrusted CA", "expired"):  # readable, but its chain does not verify
            assert reply["error_message"].startswith("Bad credentials provided: "), name
        else:
            assert "error_message" not in reply, name
    queued_after = subprocess.run(["squeue", "-h", "-u", "hpcuser", "-o", "%A"],
                                  capture_output=True, text=True, check=True).stdout.split()
    assert set(queued_after) <= set(queued_before) | set(api_.submitted)
    # no proxy, in any form, in the server's log
    log_text = layout.log_file("rimrock").read_text()
    for secret in (foreign, expired, server.proxy()):
        key_body = re.search(r"PRIVATE KEY-----\n(.{40})", secret).group(1)
        assert key_body not in log_text
        assert base64.b64encode(secret.encode()).decode()[:60] not in log_text
    assert api_.http.headers["PROXY"][:60] not in log_text


# --- the daemon ----------------------------------------------------------------------------

def test_daemon_is_part_of_the_testbed(tb, server):
    from testbed import api, daemons, listen

    rows = {r.name: r for r in api.status()}
    assert rows["rimrock"].running
    pid = rows["rimrock"].pid
    api.ensure_up()  # idempotent: the same process keeps serving
    assert {r.name: r for r in api.status()}["rimrock"].pid == pid
    spec = server.daemon(tuple(listen.remembered()))
    for address in listen.remembered():  # like sshd and slurmrestd: every remembered address
        assert f"{address}:6830" in spec.argv
        assert daemons.port_answers(address, 6830)
    # the worker that handles requests is not root
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and (p / "stat").exists()
                and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid)]
    assert children
    for child in children:
        uid = next(line.split()[1] for line in (child / "status").read_text().splitlines()
                   if line.startswith("Uid:"))
        assert uid != "0"
