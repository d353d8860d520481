"""Several connectors' `find` in one scheduler request.

Every new pod asks whether its job exists before submitting (a restarted container with a
lost state file must not submit twice). A burst of N new pods would cost the session N
listings of the user's whole queue, each longer than the last (O(N²) bytes); the session
gathers the finds waiting at once and answers them from one listing. SLURM's backend lists
the user's jobs with every field `find` compares; other managers are asked one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

from connector.backends.base import Backend, JobHandle, JobRequest


def find_many(backend: Backend, requests: Sequence[JobRequest]) -> list[JobHandle | None]:
    from connector.backends.slurm import SlurmBackend

    if len(requests) < 2 or not isinstance(backend, SlurmBackend) or type(backend).find is not SlurmBackend.find:
        return [backend.find(request) for request in requests]
    # SlurmBackend.find for many tags, from one `squeue --me` (same rules: the newest job
    # carrying the tag; a verbatim script's output where its own directives sent it)
    newest: dict[str, dict[str, str]] = {}
    for record in backend._listing(mine=True):  # noqa: SLF001 - the listing find itself uses
        tag = record.get("Comment", "")
        current = newest.get(tag)
        if current is None or _number(record["JobID"]) > _number(current["JobID"]):
            newest[tag] = record
    found: list[JobHandle | None] = []
    for request in requests:
        match = newest.get(request.tag)
        if match is None:
            found.append(None)
        elif request.spec.script is None:
            found.append(JobHandle.rendered(match["JobID"], request.job_dir))
        else:
            found.append(backend._located(match["JobID"], request.job_dir))  # noqa: SLF001
    return found


def _number(job_id: str) -> int:
    return int(job_id) if job_id.isdigit() else -1
