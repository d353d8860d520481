"""A Rimrock-compatible server in front of the testbed's SLURM (issue 10, item 4).

Rimrock (github.com/process-project/rimrock, Java/Spring Boot 1.5 — not Rails; read at
release 2.0.4, commit 4c538f1) is the REST service the paper used on Prometheus. There is no
public instance, so the testbed runs this server: same routes, fields, status codes and
quirks, in front of the real SLURM over SSH. No Rimrock code is copied; the behaviour below
is what its source shows (file names are Rimrock's):

Routes (`JobsController`), all under the `PROXY` header (base64 of the proxy PEM):
- `POST /api/jobs` JSON {host, working_directory, script, tag} → 201 JobInfo, status QUEUED.
- `GET /api/jobs/{id}` → 200 JobInfo of the caller's job (404 "Job with {id} id does not
  exist" otherwise); it first updates the job unless it is FINISHED/ABORTED with history.
- `GET /api/jobs[?tag=T]` → 200 list: updates all the caller's polled jobs on every host he
  used (one status query per host), then lists his jobs (with that tag).
- `PUT /api/jobs/{id}` {"action": "abort"} → 204 (any other action: 204, nothing done);
  `DELETE /api/jobs/{id}` → 204 (cancels unless FINISHED, then forgets the job).
- JobInfo: job_id, stdout_path, stderr_path, status, tag, and once known nodes, cores,
  wall_time, queue_time, start_time, end_time; null fields are omitted. The job id is
  `<SLURM id>.<login node hostname>`. The paths are download URLs
  `<plgridData.url>/download/<absolute path>` (a double slash: `…/download//home/…`):
  Rimrock serves no files; PLGData does, with the same PROXY header. This server plays both
  (its own address as the PLGData URL) and honours one `Range: bytes=…` (206; 416 past the
  end) — PLGData's own range support is not documented, so that part is this server's.
- `POST /api/process` {host, command, working_directory} (`RunController`): the command
  in a login shell on the host, 10 s limit → 200 {status: "OK", exit_code, standard_output,
  error_output}; 408 past the limit; 422 without host (its one validated field).
- PLGData as Rimrock uses it (`FileManager`): `POST /upload/<dir>` multipart `file` (with
  `recursive=true` the directory is made); files are written 0600 here.
- Statuses: QUEUED, RUNNING, FINISHED, ERROR, ABORTED, and "" for a SLURM state outside the
  status script's table (e.g. OUT_OF_MEMORY, BOOT_FAIL, DEADLINE). No exit code anywhere.

Status quirks (`scripts/status` + `UserJobs.update`):
- SLURM → Rimrock: PENDING → QUEUED; RUNNING, SUSPENDED, COMPLETING, CONFIGURING and
  CANCELLED → RUNNING; COMPLETED → FINISHED; FAILED, TIMEOUT, PREEMPTED, NODE_FAIL,
  SPECIAL_EXIT → ERROR. So a job cancelled outside Rimrock reads RUNNING until it leaves the
  queue; a job the query does not list reads FINISHED (also when the controller is down).
- FINISHED and ABORTED are final; ERROR is not: it turns FINISHED once the job has left.
- Rimrock 2.0.4 asks `sacct` (accounting); until July 2020, when the paper was written, it
  asked `squeue`. This server asks `squeue -t all` (every state while SLURM keeps the job:
  MinJobAge, 3600 s here; it needs no accounting, and the quirks above are the queue's)
  with 2.0.4's table, and takes the history (nodes, cores, times) from the same query.
  (2.0.4's sacct answers "CANCELLED by <uid>", which its table does not know: "".)
  The script's substring `grep` of job ids (job 12 also matching 123) is not reproduced:
  with the testbed's small ids it would hit constantly.

Errors: `{"exit_code", "standard_output", "error_output", "status": "ERROR",
"error_message"}` (Rimrock's docs page writes "error"; its code and tests say ERROR):
- 408: submit or cancel cut by the 20 s limit ("Unable to submit new job because of
  timeout", exit_code -1); a status query cut by it is a 500 "Timeout occurred".
- 500: the start/stop script failed ("Submission of new job failed" — for cancel too — with
  its exit code: 22 sbatch/scancel, 23 scontrol, 24 no job id; its JSON on
  standard_output); SSH/upload failures; a body that is not JSON (Spring's 400s are caught
  by Rimrock's catch-all handler and become 500s), a missing host/script/action (a
  NullPointerException: error_message null); an unsupported method.
- 404: an unknown job id. 422 is declared by Rimrock's handler but unreachable from the jobs
  API (its request classes have no validation constraints).
- Proxy: a missing, undecodable or unmappable proxy, or one whose chain does not verify
  against a trusted CA, is refused by Spring Security's pre-authentication filter: **403**
  with Spring Boot's error body {timestamp, status: 403, error, message: "Access Denied",
  path}, plus `error_message: "Bad credentials provided: …"` when the chain did not verify.
  (Rimrock's 401 is only reached from a controller, for a proxy the filter already read.)
- The user is the proxy issuer's DN: a configured DN prefix (`mapping.<login>`) or a
  `CN=plg…` login. Here hpcuser's testbed certificate is mapped to `hpcuser`.

Modules: pki (CA, proxies, verification), store (the job table), hpc (SSH and the three
job scripts), jobs (the update/abort rules), app (HTTP), serve (gunicorn), service (the
testbed daemon and files).
"""
