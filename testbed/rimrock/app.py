"""The HTTP face: Rimrock's `/api/jobs` routes, its proxy check and error bodies, and the
PLGData-style `/download/<path>` that its `stdout_path`/`stderr_path` URLs point at.

The proxy is a credential: it is never logged, echoed or stored; a failure names only why.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import posixpath
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from . import hpc, pki
from .jobs import JobNotFound, RunError, Site, UserJobs
from .store import Job, Store

log = logging.getLogger("rimrock")

MAX_BODY = 1 << 20
CHUNK = 1 << 16
DOWNLOAD_TIMEOUT = 300.0
PROCESS_TIMEOUT = 10.0  # Rimrock's run.timeout.millis
GUARDED = ("/api/", "/download/", "/upload/")  # everything else is a 404


@dataclass
class Config:
    """What the server needs (written by `testbed up` as JSON; no secret in it, only paths)."""

    db: Path
    ca_file: Path
    node: hpc.LoginNode
    mappings: dict[str, str] = field(default_factory=dict)  # login → DN prefix
    site: Site = field(default_factory=Site)
    plgdata_url: str | None = None  # None: this server, as the client reached it

    @classmethod
    def load(cls, path: Path) -> Config:
        raw = json.loads(path.read_text())
        node = raw["node"]
        return cls(
            db=Path(raw["db"]), ca_file=Path(raw["ca_file"]),
            node=hpc.LoginNode(address=node["address"], port=int(node["port"]),
                               known_hosts=Path(node["known_hosts"]),
                               key_path=Path(node["key_path"]),
                               aliases=frozenset(node["aliases"]),
                               pool_size=int(node.get("pool_size", 5)),
                               timeout=float(node.get("timeout", 20))),
            mappings=dict(raw.get("mappings", {})),
            site=Site(raw.get("root_path", Site.root_path)),
            plgdata_url=raw.get("plgdata_url"),
        )


class _AnyPath(PathConverter):
    """A path that may start with "/" (Rimrock's URLs read `…/download//home/…`)."""

    regex = ".*"
    part_isolating = False  # werkzeug guesses True for a regex without "/"


def error_body(message: str | None, exit_code: int = 0, output: str | None = None,
               error: str | None = None) -> dict[str, Any]:
    """Rimrock's ErrorResponse (its `status` is the enum name ERROR, as its tests expect)."""
    return {"exit_code": exit_code, "standard_output": output, "error_output": error,
            "status": "ERROR", "error_message": message}


def spring_body(status: int, error: str, message: str, path: str,
                error_message: str | None = None) -> dict[str, Any]:
    """Spring Boot 1.5's error page (security refusals, unknown routes), with Rimrock's
    `error_message` when an authentication failed."""
    body: dict[str, Any] = {"timestamp": int(time.time() * 1000), "status": status,
                            "error": error, "message": message, "path": path}
    if error_message is not None:
        body["error_message"] = error_message
    return body


def _json(body: object, status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def job_info(job: Job, plgdata: str) -> dict[str, Any]:
    """Rimrock's JobInfo: null fields are left out."""
    body = {"job_id": job.job_id, "stdout_path": f"{plgdata}/download/{job.stdout}",
            "stderr_path": f"{plgdata}/download/{job.stderr}", "status": job.status,
            "tag": job.tag, "nodes": job.nodes, "cores": job.cores, "wall_time": job.wall_time,
            "queue_time": job.queue_time, "start_time": job.start_time, "end_time": job.end_time}
    return {k: v for k, v in body.items() if v is not None}


def create_app(config: Config) -> Flask:
    app = Flask("rimrock")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.url_map.converters["anypath"] = _AnyPath
    app.url_map.merge_slashes = False
    store = Store(config.db)
    gateway = hpc.Gateway(config.node)
    trusted = pki.load_certificates(config.ca_file.read_bytes())

    def plgdata() -> str:
        return (config.plgdata_url or request.host_url).rstrip("/")

    def user_jobs() -> UserJobs:
        return UserJobs(store, gateway, config.site, g.login)

    @app.before_request
    def authenticate() -> Response | None:
        """Rimrock's proxy filter guards /api/** (PLGData checks the same proxy on its
        uploads and downloads): no usable proxy → 403 from Spring Security's entry point."""
        if not request.path.startswith(GUARDED):
            return None
        header = request.headers.get("PROXY")
        reason, message = "no PROXY header", None
        if header is not None:
            try:
                proxy = pki.parse(base64.b64decode(header, validate=True).decode(),
                                  config.mappings)
                pki.verify(proxy, trusted)
                g.login = proxy.login
                return None
            except (binascii.Error, UnicodeError):
                reason = "PROXY is not base64 of a PEM text"
            except pki.ProxyUnreadable as exc:
                reason = str(exc)
            except pki.ProxyRejected as exc:
                reason = message = f"Bad credentials provided: {exc}"
        log.warning("%s %s refused: %s", request.method, request.path, reason)
        return _json(spring_body(403, "Forbidden", "Access Denied", request.path, message), 403)

    def body() -> dict[str, Any]:
        """Spring's JSON reading: wrong content type, no body or bad JSON is a 500."""
        if request.mimetype != "application/json":
            raise RuntimeError(f"Content type '{request.content_type or ''}' not supported")
        raw = request.get_data(cache=False)
        if not raw.strip():
            raise RuntimeError("Required request body is missing")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RuntimeError(f"JSON parse error: {exc}") from None
        if not isinstance(data, dict):
            raise RuntimeError("JSON parse error: expected an object")
        return data

    def text(data: dict[str, Any], key: str) -> str | None:
        """Jackson's String binding: scalars become text, objects and lists are an error."""
        value = data.get(key)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, (dict, list)):
            raise RuntimeError(f"JSON parse error: {key} must be a string")
        return json.dumps(value)

    @app.post("/api/jobs")
    def submit() -> Response:
        data = body()
        host, script = text(data, "host"), text(data, "script")
        if host is None or script is None:
            raise RuntimeError(None)  # Rimrock: a NullPointerException, no message
        job = user_jobs().submit(host, text(data, "working_directory"), script, text(data, "tag"))
        return _json(job_info(job, plgdata()), 201)

    @app.get("/api/jobs/<job_id>")
    def job_status(job_id: str) -> Response:
        jobs = user_jobs()
        job = jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        if job.status not in ("FINISHED", "ABORTED") or job.cores is None:
            jobs.update([job.host], None, [job_id])
            job = jobs.get(job_id) or job
        return _json(job_info(job, plgdata()), 200)

    @app.get("/api/jobs")
    def all_jobs() -> Response:
        jobs = user_jobs().update(None, request.args.get("tag"), None)
        return _json([job_info(j, plgdata()) for j in jobs], 200)

    @app.put("/api/jobs/<job_id>")
    def action(job_id: str) -> Response:
        data = body()
        name = text(data, "action")
        if name is None:
            raise RuntimeError(None)
        if name.lower() == "abort":
            user_jobs().abort(job_id)
        return Response(status=204)

    @app.delete("/api/jobs/<job_id>")
    def delete(job_id: str) -> Response:
        user_jobs().delete(job_id)
        return Response(status=204)

    @app.post("/api/process")
    def process() -> Response:
        """Rimrock's RunController: one command on the host as the user (10 s limit)."""
        data = body()
        host = text(data, "host")
        if host is None:
            return _json(error_body("host: NotNull.runRequest.host, NotNull.host, NotNull", -1), 422)
        command = text(data, "command")
        directory = text(data, "working_directory")
        line = "null" if command is None else command  # Java's string concatenation of a null
        if directory is not None:
            line = f"cd {shlex.quote(directory)}; {line}"
        with gateway.session(host, g.login, timeout=PROCESS_TIMEOUT) as sess:
            result = sess.run(line)
        if result.timed_out:
            raise RunError("timeout occurred; maximum allowed execution time for this operation "
                           f"is {int(PROCESS_TIMEOUT * 1000)} ms", result)
        return _json({"exit_code": result.exit_code, "standard_output": result.output.strip(),
                      "error_output": result.error, "status": "OK", "error_message": None}, 200)

    @app.post("/upload/<anypath:path>")
    def upload(path: str) -> Response:
        """PLGData's upload as Rimrock calls it: multipart `file`, into the directory named by
        the path (created when `recursive` is true). Made 0600 before any byte is written."""
        item = request.files.get("file")
        if item is None or not item.filename or "/" in item.filename or item.filename in (".", ".."):
            return _json(error_body("a multipart `file` with a plain file name is required"), 400)
        directory = posixpath.normpath("/" + path.lstrip("/"))
        target = posixpath.join(directory, item.filename)
        recursive = request.form.get("recursive", "false").lower() == "true"
        with gateway.session(sorted(config.node.aliases)[0], g.login) as sess:
            if recursive:
                made = sess.run(f"mkdir -p -- {shlex.quote(directory)}")
                if made.exit_code != 0 or made.timed_out:
                    return _json(error_body(f"cannot create {directory}: {made.error.strip()}"), 403)
            try:
                with sess.sftp().open(target, "w") as handle:
                    handle.chmod(0o600)
                    while chunk := item.stream.read(CHUNK):
                        handle.write(chunk)
            except FileNotFoundError:
                return _json(error_body(f"No such directory: {directory}"), 404)
            except PermissionError:
                return _json(error_body(f"Permission denied: {target}"), 403)
        log.info("%s uploaded %s", g.login, target)
        return Response(status=200)

    @app.get("/download/<anypath:path>")
    def download(path: str) -> Response:
        """The file as the proxy's user reads it on the host; one byte range if asked."""
        target = posixpath.normpath("/" + path.lstrip("/"))
        host = sorted(config.node.aliases)[0]
        sess = gateway.open(host, g.login, timeout=DOWNLOAD_TIMEOUT)
        try:
            sftp = sess.sftp()
            size = sftp.stat(target).st_size or 0
            span = (0, size)
            status = 200
            if request.range is not None:
                wanted = request.range.range_for_length(size)
                if wanted is None:
                    sess.close()
                    resp = _json(error_body(f"Range not satisfiable for {target} ({size} bytes)"),
                                 416)
                    resp.headers["Content-Range"] = f"bytes */{size}"
                    return resp
                span, status = wanted, 206
            handle = sftp.open(target, "rb")
            handle.seek(span[0])
        except FileNotFoundError:
            sess.close()
            return _json(error_body(f"No such file: {target}"), 404)
        except PermissionError:
            sess.close()
            return _json(error_body(f"Permission denied: {target}"), 403)
        except BaseException:
            sess.broken = True
            sess.close()
            raise

        def stream() -> Iterator[bytes]:
            left = span[1] - span[0]
            try:
                while left > 0:
                    chunk = handle.read(min(CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    yield chunk
            except BaseException:
                sess.broken = True
                raise
            finally:
                handle.close()
                sess.close()

        resp = Response(stream(), status=status, mimetype="application/octet-stream")
        resp.headers["Accept-Ranges"] = "bytes"
        resp.headers["Content-Length"] = str(span[1] - span[0])
        if status == 206:
            resp.headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{size}"
        return resp

    @app.errorhandler(RunError)
    def run_error(exc: RunError) -> Response:
        log.warning("%s %s: %s (exit %s)", request.method, request.path, exc.message, exc.exit_code)
        return _json(error_body(exc.message, exc.exit_code, exc.output, exc.error),
                     408 if exc.timed_out else 500)

    @app.errorhandler(JobNotFound)
    def not_found(exc: JobNotFound) -> Response:
        return _json(error_body(str(exc)), 404)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code == 404:
            return _json(spring_body(404, "Not Found", "No message available", request.path), 404)
        if code == 405:  # Spring: an exception its catch-all handler turns into a 500
            return _json(error_body(f"Request method '{request.method}' not supported"), 500)
        return _json(error_body(exc.description), code)

    @app.errorhandler(Exception)
    def other(exc: Exception) -> Response:
        if isinstance(exc, (hpc.ConnectError, hpc.UploadError, RuntimeError)):
            message = exc.args[0] if exc.args else None
        else:
            log.exception("%s %s failed", request.method, request.path)
            message = f"{type(exc).__name__}: {exc}"
        if message is not None:
            log.warning("%s %s: %s", request.method, request.path, message)
        return _json(error_body(message), 500)

    return app
