"""The slurmrestd API layer against recorded bodies: v0.0.38 recorded from the testbed's SLURM
22.05 (tests/fixtures/slurmrestd/record.py), v0.0.40 and v0.0.41 written from their published
OpenAPI descriptions and SchedMD's sources (each file says where it came from). The same job
scenario must read the same in every version; a last test sends the v0.0.38 body to the real
slurmrestd."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from connector.backends import slurm_rest_api as api
from connector.backends.slurm_rest_api import Problem, SubmitRequest

FIXTURES = Path(__file__).parent / "fixtures" / "slurmrestd"
VERSIONS = ("v0.0.38", "v0.0.40", "v0.0.41")
WORKDIR = "/home/hpcuser/hpc-offload/rest-fixtures"


def record(version: str, name: str) -> dict:
    return json.loads((FIXTURES / version / f"{name}.json").read_text())


def response(version: str, name: str) -> dict:
    return record(version, name)["response"]


def the_job(version: str, name: str) -> api.RestJob:
    jobs = api.parse_jobs(response(version, name))
    assert len(jobs) == 1
    return jobs[0]


def test_every_fixture_says_where_it_came_from():
    files = sorted(FIXTURES.glob("v*/*.json"))
    assert len(files) > 50
    for path in files:
        rec = json.loads(path.read_text())
        assert rec["source"], path
        assert {"method", "path"} <= set(rec["request"]), path
        assert isinstance(rec["status"], int), path


# --- version discovery -----------------------------------------------------------------------


def test_served_versions_from_each_description():
    assert api.served_versions(response("v0.0.38", "openapi-v3")) == ["v0.0.38", "v0.0.37", "v0.0.36"]
    assert api.served_versions(response("v0.0.40", "openapi-v3")) == ["v0.0.40"]
    assert api.served_versions(response("v0.0.41", "openapi-v3")) == ["v0.0.41"]
    assert api.served_versions({"paths": "nonsense"}) == []
    assert api.served_versions({}) == []


@pytest.mark.parametrize(("served", "wanted", "chosen"), [
    (["v0.0.38", "v0.0.37", "v0.0.36"], None, "v0.0.38"),  # the testbed's SLURM 22.05
    (["v0.0.41", "v0.0.40", "v0.0.39"], None, "v0.0.41"),  # SLURM 24.05
    (["v0.0.40", "v0.0.39"], None, "v0.0.40"),  # SLURM 23.11
    (["v0.0.42", "v0.0.41", "v0.0.40"], None, "v0.0.41"),  # newer than this client: best it knows
    (["v0.0.41", "v0.0.40"], "v0.0.40", "v0.0.40"),  # the profile pins one
    ([], "v0.0.38", "v0.0.38"),  # no description: the pinned one is probed as is
])
def test_choose_version(served, wanted, chosen):
    assert api.choose_version(served, wanted) == chosen


@pytest.mark.parametrize(("served", "wanted", "message"), [
    (["v0.0.38", "v0.0.37"], "v0.0.41", "not served by this slurmrestd (it serves: v0.0.38, v0.0.37)"),
    (["v0.0.39"], "v0.0.39", "not supported by this connector (supported: v0.0.41, v0.0.40, v0.0.38)"),
    (["v0.0.39", "v0.0.37"], None, "serves v0.0.39, v0.0.37; this connector supports v0.0.41, v0.0.40, v0.0.38"),
    ([], None, "serves none"),
    (["v0.0.38"], "0.0.38", "'0.0.38' is not an API version like v0.0.38"),
])
def test_choose_version_says_what_is_served_and_supported(served, wanted, message):
    with pytest.raises(api.ApiVersionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        api.choose_version(served, wanted)


def test_a_version_the_server_lacks_is_unserved_not_an_error_of_the_job():
    # 22.05 answers an unknown version's ping with a plain-text 404
    for version in ("v0.0.39", "v0.0.41"):
        rec = record("v0.0.38", f"ping-{version}")
        assert rec["status"] == 404
        assert api.classify(rec["status"], rec["response"]) is Problem.UNSERVED
    assert api.classify(200, response("v0.0.38", "ping-v0.0.38")) is Problem.OK
    assert api.probe_order() == api.SUPPORTED_VERSIONS
    assert api.probe_order("v0.0.40") == ("v0.0.40",)


def test_the_description_needs_the_headers_but_not_a_valid_token():
    rec = record("v0.0.38", "openapi-v3-no-token")
    assert (rec["status"], api.classify(rec["status"], rec["response"])) == (401, Problem.AUTH)


# --- paths -----------------------------------------------------------------------------------


def test_paths_follow_each_description():
    assert api.jobs_path("v0.0.38") == "/slurm/v0.0.38/jobs"
    assert api.ping_path("v0.0.38") == "/slurm/v0.0.38/ping"
    for version in ("v0.0.40", "v0.0.41"):
        paths = response(version, "openapi-v3")["paths"]
        for path in (api.jobs_path(version), api.ping_path(version), api.submit_path(version)):
            assert path in paths
        assert f"/slurm/{version}/job/{{job_id}}" in paths
    assert api.job_path("v0.0.41", "42") == "/slurm/v0.0.41/job/42"
    with pytest.raises(ValueError, match="not a number"):
        api.job_path("v0.0.41", "42/../../x")


# --- submit ----------------------------------------------------------------------------------


def fixture_request(version: str, name: str) -> SubmitRequest:
    env = {"PATH": "/usr/bin:/bin", "USER": "hpcuser", "HPC_OFFLOAD_DEMO": "a b'c"}
    script = "#!/bin/sh\necho never\n" if version == "v0.0.38" else "#!/bin/sh\necho hello\n"
    return SubmitRequest(script=script, name=name, workdir=WORKDIR, stdout=f"{WORKDIR}/{name}.out",
                         environment=env, time_limit_minutes=5, partition="debug",
                         comment="hpc-offload fixture")


def test_submit_body_v0038_is_what_the_testbed_accepted():
    rec = record("v0.0.38", "submit")
    sent = rec["request"]["body"]
    body = api.submit_body("v0.0.38", fixture_request("v0.0.38", "fixture-held"))
    sent_job = {k: v for k, v in sent["job"].items() if k != "hold"}  # the recording held its job
    assert body == {"script": sent["script"], "job": sent_job}
    assert body["job"]["environment"] == {"PATH": "/usr/bin:/bin", "USER": "hpcuser", "HPC_OFFLOAD_DEMO": "a b'c"}
    assert body["job"]["time_limit"] == 5


@pytest.mark.parametrize("version", ["v0.0.40", "v0.0.41"])
def test_submit_body_v004x_matches_the_description(version):
    sent = record(version, "submit")["request"]["body"]
    body = api.submit_body(version, fixture_request(version, "fixture-completed"))
    assert body == sent
    assert "script" not in body  # deprecated at the top level in v0.0.41: it rides in `job`
    assert body["job"]["environment"] == ["PATH=/usr/bin:/bin", "USER=hpcuser", "HPC_OFFLOAD_DEMO=a b'c"]
    assert body["job"]["time_limit"] == {"set": True, "infinite": False, "number": 5}


def test_submit_body_maps_resources_per_version():
    request = SubmitRequest(script="#!/bin/sh\n", name="n", workdir="/w", stdout="/w/o", stderr="/w/e",
                            cpus_per_task=2, memory_per_node_mb=1500, nodes=1, tasks=3, gpus=2,
                            account="proj", qos="normal", requeue=False)
    legacy = api.submit_body("v0.0.38", request)["job"]
    assert legacy["nodes"] == [1, 1]  # v0.0.38: [min, max]
    assert legacy["memory_per_node"] == 1500
    assert legacy["gres"] == "gpu:2"
    assert legacy["standard_error"] == "/w/e"
    new = api.submit_body("v0.0.41", request)["job"]
    assert new["nodes"] == "1"  # a count range string
    assert new["memory_per_node"] == {"set": True, "infinite": False, "number": 1500}
    assert new["tres_per_node"] == "gres/gpu:2" and "gres" not in new
    for job in (legacy, new):
        picked = (job["cpus_per_task"], job["tasks"], job["account"], job["qos"], job["requeue"])
        assert picked == (2, 3, "proj", "normal", False)
    bare = SubmitRequest(script="#!/bin/sh\n", name="n", workdir="/w", stdout="/w/o")
    assert api.submit_body("v0.0.38", bare)["job"]["environment"]  # 22.05 refuses an empty one
    assert api.submit_body("v0.0.41", bare)["job"]["environment"]
    assert "time_limit" not in api.submit_body("v0.0.41", bare)["job"]
    typed = SubmitRequest(script="#!/bin/sh\n", name="n", workdir="/w", stdout="/w/o", gpus=1, gpu_type="a100",
                          constraints="intel", reservation="maint", time_limit_minutes=0)
    legacy, new = api.submit_body("v0.0.38", typed)["job"], api.submit_body("v0.0.40", typed)["job"]
    assert (legacy["gres"], new["tres_per_node"]) == ("gpu:a100:1", "gres/gpu:a100:1")
    assert legacy["constraints"] == new["constraints"] == "intel"
    assert legacy["reservation"] == new["reservation"] == "maint"
    assert "open_mode" not in legacy
    appended = SubmitRequest(script="#!/bin/sh\n", name="n", workdir="/w", stdout="/w/o", append_output=True, nice=5)
    assert api.submit_body("v0.0.38", appended)["job"]["open_mode"] == "append"
    assert api.submit_body("v0.0.41", appended)["job"]["open_mode"] == ["APPEND"]
    assert api.submit_body("v0.0.41", appended)["job"]["nice"] == 5
    # no limit: SLURM's INFINITE (the testbed's 22.05 shows TimeLimit=UNLIMITED for it)
    assert legacy["time_limit"] == 4294967295
    assert new["time_limit"] == {"set": False, "infinite": True, "number": 0}


def test_an_empty_environment_is_refused_by_2205():
    rec = record("v0.0.38", "error-submit-no-environment")
    assert rec["status"] == 400
    assert api.classify(rec["status"], rec["response"]) is Problem.REFUSED
    assert "environment must be set" in api.describe(rec["status"], rec["response"])


@pytest.mark.parametrize(("version", "name", "job"), [
    ("v0.0.38", "submit", "job-pending-held"),  # the recorded submit held its job
    ("v0.0.40", "submit", "job-completed"), ("v0.0.41", "submit", "job-completed"),
    ("v0.0.40", "submit-held", "job-pending-held"), ("v0.0.41", "submit-held", "job-pending-held"),
])
def test_parse_submit(version, name, job):
    rec = record(version, name)
    assert rec["status"] == 200
    assert api.classify(rec["status"], rec["response"]) is Problem.OK  # a held job is no error
    assert api.parse_submit(rec["response"]) == the_job(version, job).job_id


def test_parse_submit_reads_the_deprecated_result_alone():
    body = dict(response("v0.0.40", "submit"))
    del body["job_id"]
    assert api.parse_submit(body) == "201"
    with pytest.raises(ValueError, match="no job id"):
        api.parse_submit({"errors": [], "job_id": 0})


# --- jobs: the same scenario reads the same in every version -----------------------------------

SCENARIOS = {
    # fixture: (state, base state, exit code, signal, reason, node)
    "job-pending-held": ("PENDING", "PENDING", 0, 0, "JobHeldUser", None),
    "job-running": ("RUNNING", "RUNNING", 0, 0, "", "vm"),
    "job-completed": ("COMPLETED", "COMPLETED", 0, 0, "", "vm"),
    "job-failed-exit7": ("FAILED", "FAILED", 7, 0, "NonZeroExitCode", "vm"),
    "job-failed-sigkill": ("FAILED", "FAILED", 0, 9, "JobLaunchFailure", "vm"),
    "job-cancelled-running": ("CANCELLED", "CANCELLED", 0, 15, "", "vm"),
    "job-cancelled-pending": ("CANCELLED", "CANCELLED", 0, 0, "JobHeldUser", None),
    "job-timeout": ("TIMEOUT", "TIMEOUT", 0, 15, "TimeLimit", "vm"),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_job_states_exit_codes_and_signals(version, scenario):
    state, base, code, signal, reason, node = SCENARIOS[scenario]
    job = the_job(version, scenario)
    assert (job.state, job.base_state, job.exit_code, job.signal, job.reason, job.node) == \
        (state, base, code, signal, reason, node)
    assert job.name.startswith("fixture-")
    assert job.comment == "hpc-offload fixture"
    assert job.user_name == "hpcuser"
    assert job.standard_output == f"{WORKDIR}/{job.name}.out"
    assert job.workdir == WORKDIR


@pytest.mark.parametrize("version", VERSIONS)
def test_times_and_priority(version):
    pending = the_job(version, "job-pending-held")
    assert pending.start_time is None  # 0 / unset: not known yet
    assert pending.priority == 0  # held
    running = the_job(version, "job-running")
    assert running.start_time and running.start_time > 1_700_000_000
    assert running.submit_time and running.submit_time <= running.start_time
    assert running.priority and running.priority > 0


@pytest.mark.parametrize("version", ["v0.0.40", "v0.0.41"])
def test_flags_after_the_base_state(version):
    completing = the_job(version, "job-completing")
    assert (completing.state, completing.base_state, completing.flags) == ("COMPLETING", "RUNNING", ("COMPLETING",))
    requeued = the_job(version, "job-requeued")
    assert (requeued.state, requeued.base_state, requeued.restarts) == ("REQUEUED", "PENDING", 1)


def test_legacy_states_are_scontrol_names():
    job = api.parse_job({"job_id": 5, "job_state": "COMPLETING", "exit_code": 0})
    assert (job.state, job.base_state) == ("COMPLETING", "COMPLETING")


@pytest.mark.parametrize(("raw", "expected"), [
    (0, (0, 0)), (1792, (7, 0)), (9, (0, 9)), (15, (0, 15)), (33280, (130, 0)),
    (-1, (None, None)), (True, (None, None)), ("7", (None, None)), (None, (None, None)),
    ({"status": ["PENDING"], "return_code": {"set": False, "infinite": False, "number": 0},
      "signal": {"id": {"set": False, "infinite": False, "number": 0}, "name": ""}}, (None, None)),
    ({"status": ["ERROR"], "return_code": {"set": True, "infinite": False, "number": 130},
      "signal": {"id": {"set": False, "number": 0}, "name": ""}}, (130, 0)),
    ({"status": ["CORE_DUMPED"], "return_code": {"set": False}, "signal": {"id": {"set": False}}}, (None, None)),
])
def test_exit_code_forms(raw, expected):
    assert api.parse_job({"job_id": 1, "job_state": ["FAILED"], "exit_code": raw}).exit_code == expected[0]
    assert api.parse_job({"job_id": 1, "job_state": ["FAILED"], "exit_code": raw}).signal == expected[1]


def test_a_job_entry_without_an_id_is_refused():
    with pytest.raises(ValueError, match="job_id"):
        api.parse_job({"name": "x"})
    with pytest.raises(ValueError, match="`jobs` list"):
        api.parse_jobs({"errors": []})
    odd = api.parse_job({"job_id": 3, "job_state": [], "exit_code": {}, "priority": {"set": True, "infinite": True}})
    assert (odd.state, odd.exit_code, odd.priority) == ("UNKNOWN", None, None)


# --- batch status: one request for many jobs ---------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_jobs_list_finds_ours_among_others(version):
    body = response(version, "jobs-all")
    jobs = api.parse_jobs(body)
    mine = {j.name: j for j in jobs if j.name.startswith("fixture-")}
    assert {"fixture-held", "fixture-running", "fixture-completed", "fixture-exit7"} <= set(mine)
    assert any(not j.name.startswith("fixture-") for j in jobs)  # other jobs come along
    assert mine["fixture-exit7"].exit_code == 7
    held = mine["fixture-held"]
    assert api.queue_position(jobs, held.job_id) is not None
    assert api.queue_position(jobs, mine["fixture-running"].job_id) is None


def test_the_recorded_list_cost():
    # the recording kept the note of what the untrimmed answer weighed
    note = record("v0.0.38", "jobs-all")["note"]
    assert "the server listed" in note and "bytes" in note


def test_queue_position_is_priority_then_id():
    jobs = [api.RestJob(job_id="10", base_state="PENDING", priority=5),
            api.RestJob(job_id="11", base_state="PENDING", priority=9),
            api.RestJob(job_id="12", base_state="PENDING", priority=5),
            api.RestJob(job_id="13", base_state="RUNNING", priority=99)]
    assert [api.queue_position(jobs, i) for i in ("11", "10", "12", "13")] == [1, 2, 3, None]


def test_unchanged_lists_are_not_empty_queues():
    rec = record("v0.0.38", "jobs-unchanged")
    assert rec["status"] == 304 and api.unchanged(rec["status"], rec["response"])
    assert api.classify(rec["status"], rec["response"]) is Problem.OK
    for version in ("v0.0.40", "v0.0.41"):
        rec = record(version, "jobs-unchanged")
        assert rec["status"] == 200 and rec["response"]["jobs"] == []
        assert api.unchanged(rec["status"], rec["response"])
        assert not api.unchanged(200, response(version, "jobs-all"))


def test_update_time_comes_only_from_slurmctlds_clock():
    since = api.last_update(response("v0.0.41", "jobs-all"))
    assert since == 1796030560
    assert api.jobs_query("v0.0.41", since) == {"update_time": "1796030560"}
    assert api.jobs_query("v0.0.41", None) == {}
    assert api.last_update(response("v0.0.38", "jobs-all")) is None  # 22.05 does not say
    assert api.jobs_query("v0.0.38", 1796030560) == {}
    assert api.last_update("not a dict") is None


# --- cancel ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_cancel_answers(version):
    for name in ("delete-running", "delete-completed"):
        rec = record(version, name)
        assert api.classify(rec["status"], rec["response"]) is Problem.OK, name
    rec = record(version, "delete-unknown")
    assert api.classify(rec["status"], rec["response"]) is Problem.NOT_FOUND
    assert "Invalid job id specified" in api.describe(rec["status"], rec["response"])


@pytest.mark.parametrize("version", ["v0.0.40", "v0.0.41"])
def test_cancel_many_in_one_request(version):
    rec = record(version, "delete-jobs")
    assert api.can_cancel_many(version)
    assert api.kill_jobs_body(["202", "200", "999999"]) == rec["request"]["body"]
    assert api.classify(rec["status"], rec["response"]) is Problem.OK
    failures = api.kill_failures(rec["response"])
    assert list(failures) == ["999999"]
    assert failures["999999"].error_number == api.ESLURM_INVALID_JOB_ID


def test_cancel_many_guards():
    assert not api.can_cancel_many("v0.0.38")
    with pytest.raises(ValueError, match="not numbers"):
        api.kill_jobs_body(["1", "2;rm"])
    assert api.kill_failures({"status": "x"}) == {}
    assert api.kill_failures({"status": [{"step_id": "7", "error": "x"}, 3]}) == {
        "7": api.ApiError(error_number=None, error="", description="")}


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "name", "status", "problem"), [
    ("v0.0.38", "job-unknown", 500, Problem.NOT_FOUND),
    ("v0.0.40", "job-unknown", 404, Problem.NOT_FOUND),
    ("v0.0.41", "job-unknown", 404, Problem.NOT_FOUND),
    ("v0.0.38", "error-no-user-header", 401, Problem.AUTH),
    # 22.05: a token slurmctld refuses looks like an unreachable slurmctld
    ("v0.0.38", "error-token-malformed", 500, Problem.UNSPECIFIED),
    ("v0.0.38", "error-token-expired", 500, Problem.UNSPECIFIED),
    ("v0.0.38", "error-token-bad-signature", 500, Problem.UNSPECIFIED),
    ("v0.0.38", "error-token-other-user", 500, Problem.UNSPECIFIED),
    ("v0.0.38", "error-token-malformed-ping", 500, Problem.UNSPECIFIED),
    ("v0.0.38", "error-slurmctld-down-ping", 500, Problem.UNSPECIFIED),
    ("v0.0.38", "error-slurmctld-down-jobs", 500, Problem.UNSPECIFIED),
    ("v0.0.38", "error-token-malformed-submit", 500, Problem.TRANSIENT),
    ("v0.0.38", "error-token-malformed-delete", 500, Problem.TRANSIENT),
    ("v0.0.38", "error-submit-bad-partition", 500, Problem.REFUSED),
    ("v0.0.38", "error-submit-no-script", 500, Problem.REFUSED),
    ("v0.0.40", "error-submit-bad-partition", 500, Problem.REFUSED),
    ("v0.0.41", "error-submit-bad-partition", 500, Problem.REFUSED),
    ("v0.0.38", "token-root-for-user", 200, Problem.OK),  # root's token may act for any user
])
def test_classify_recorded_errors(version, name, status, problem):
    rec = record(version, name)
    assert rec["status"] == status
    assert api.classify(rec["status"], rec["response"]) is problem


def test_classify_by_number_and_status():
    def err(number):
        return {"errors": [{"error_number": number, "error": "e"}]}
    assert api.classify(500, err(1007)) is Problem.AUTH
    assert api.classify(500, err(6004)) is Problem.AUTH
    assert api.classify(500, err(2002)) is Problem.DENIED
    assert api.classify(403, {}) is Problem.DENIED
    assert api.classify(500, err(1800)) is Problem.TRANSIENT
    assert api.classify(500, err(2020)) is Problem.TRANSIENT
    assert api.classify(503, "busy") is Problem.TRANSIENT
    assert api.classify(500, "") is Problem.TRANSIENT
    assert api.classify(422, err(9000)) is Problem.REFUSED
    assert api.classify(200, err(2042)) is Problem.OK


def test_describe_is_one_clear_line():
    rec = record("v0.0.38", "error-submit-bad-partition")
    assert api.describe(rec["status"], rec["response"]) == "Invalid partition name specified"
    rec = record("v0.0.38", "job-unknown")
    assert api.describe(rec["status"], rec["response"]) == "Invalid job id specified; Unable to find JobId=999999"
    assert api.describe(401, "Authentication failure") == "HTTP 401: Authentication failure"
    assert api.describe(502, None) == "HTTP 502"
    assert api.warnings_of(response("v0.0.41", "submit-held"))[-1] == "Job is in held state, pending scheduler release"


# --- tokens ----------------------------------------------------------------------------------


def jwt(claims: dict) -> str:
    """A token shaped as `scontrol token` mints it (HS256 header, exp/iat/sun claims)."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def test_token_claims():
    exp = int(time.time()) + 600
    token = jwt({"exp": exp, "iat": exp - 600, "sun": "hpcuser"})
    assert api.token_expiry(token) == exp
    assert api.token_user(token) == "hpcuser"
    assert api.token_expiry(jwt({"sun": "x"})) is None
    assert api.token_user(jwt({"exp": 1})) is None
    assert api.parse_scontrol_token(f"SLURM_JWT={token}\n") == token


@pytest.mark.parametrize("bad", ["", "not-a-jwt", "a.b", "a..c", "!!!.@@@.###", "eyJhIjoxfQ.WzFd.sig",
                                 "eyJhIjoxfQ.bm90IGpzb24.sig"])
def test_a_malformed_token_is_refused_without_echoing_it(bad):
    with pytest.raises(api.TokenError) as caught:
        api.token_claims(bad)
    assert "not a JWT" in str(caught.value)
    if bad:
        assert bad not in str(caught.value)


def test_scontrol_token_output_without_a_token():
    with pytest.raises(api.TokenError, match="no SLURM_JWT"):
        api.parse_scontrol_token("scontrol: error: Unable to fetch token\n")


def test_auth_headers_carry_both_names():
    assert api.auth_headers("hpcuser", "t") == {"X-SLURM-USER-NAME": "hpcuser", "X-SLURM-USER-TOKEN": "t"}


# --- the real server ---------------------------------------------------------------------------


@pytest.mark.slurm
def test_v0038_round_trip_against_the_testbed(testbed_info):
    """The body this module builds is accepted by the real slurmrestd, and what comes back
    parses: discovery picks v0.0.38, the job ends with its exit code, a cancel of it is fine."""
    import requests

    from testbed import api as testbed

    token = testbed.rest_token(lifespan=300)
    session = requests.Session()
    session.headers.update(api.auth_headers("hpcuser", token))
    base = testbed_info.rest_url
    doc = session.get(f"{base}/openapi/v3", timeout=30).json()
    version = api.choose_version(api.served_versions(doc))
    assert version == "v0.0.38"
    workdir = "/home/hpcuser"
    request = SubmitRequest(script="#!/bin/sh\necho round-trip\nexit 3\n", name="rest-api-round-trip",
                            workdir=workdir, stdout="/dev/null", environment={"PATH": "/usr/bin:/bin"},
                            time_limit_minutes=1, partition="debug", comment="hpc-offload test")
    resp = session.post(base + api.submit_path(version), json=api.submit_body(version, request), timeout=30)
    assert api.classify(resp.status_code, resp.json()) is Problem.OK, api.describe(resp.status_code, resp.json())
    job_id = api.parse_submit(resp.json())
    deadline = time.monotonic() + 120
    while True:
        resp = session.get(base + api.job_path(version, job_id), timeout=30)
        assert api.classify(resp.status_code, resp.json()) is Problem.OK
        job = api.parse_jobs(resp.json())[0]
        if job.base_state not in ("PENDING", "RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert (job.job_id, job.name, job.state, job.exit_code, job.signal) == \
        (job_id, "rest-api-round-trip", "FAILED", 3, 0)
    listed = session.get(base + api.jobs_path(version), timeout=30)
    assert job_id in {j.job_id for j in api.parse_jobs(listed.json())}
    resp = session.delete(base + api.job_path(version, job_id), timeout=30)
    assert api.classify(resp.status_code, resp.json()) is Problem.OK
    resp = session.get(base + api.job_path(version, "4000000"), timeout=30)
    assert api.classify(resp.status_code, resp.json()) is Problem.NOT_FOUND
