"""The paper's command-line form (hpc-connector, 2020), read as its Fig. 2/Fig. 3 write it.

Its Job passes ConfigMap keys to the connector through env vars referenced in `args` as
`${BACKEND_NAME}`. Kubernetes expands only `$(VAR)` there, so the connector expands `${VAR}`
itself (the paper's image did). Its `--backend-conf` is the ConfigMap's `configuration`
JSON and its `--job-config` a JSON object (`script`, optional `host`), inline or in a file.
Credentials never travel on a command line: they come from a mounted profile directory.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from connector.errors import SpecError

log = logging.getLogger("hpc-connector")

#: Where the webhook mounts a profile; a Secret mounted here serves the paper's form too.
DEFAULT_CREDENTIALS = "/var/run/hpc-offload/profile"

# `$${NAME}` is an escaped, literal `${NAME}` (as `$$(NAME)` is for Kubernetes).
_REFERENCE = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_JOB_KEYS = ("script", "host")


def expand(value: str | None, environ: Mapping[str, str], what: str) -> str | None:
    """`${NAME}` references replaced by the environment's values, in one pass (a value that
    itself holds `${…}` is taken as written). Inline JSON is never expanded: a script's own
    `${SLURM_JOB_ID}` must reach the HPC side untouched. An unset name is an error, so a Job
    whose ConfigMap key is missing says which, instead of submitting `${NAME}`."""
    if value is None or value.lstrip().startswith("{"):
        return value

    def replace(match: re.Match[str]) -> str:
        escaped, name = match.groups()
        if escaped:
            return "${" + name + "}"
        if name not in environ:
            raise SpecError(f"{what}: ${{{name}}} is not set in the connector's environment "
                            "(is the ConfigMap key its env var reads from there?)")
        return environ[name]

    return _REFERENCE.sub(replace, value)


def backend_configuration(text: str | None, what: str = "--backend-conf") -> dict[str, Any]:
    """The ConfigMap's `configuration` value: a JSON object, inline or in a file (a mounted
    ConfigMap key), also when YAML quoting left it JSON-encoded twice."""
    if text is None or not text.strip():
        return {}
    value = _json(_inline_or_file(text, what), what)
    if isinstance(value, str):  # '"{\"host\": …}"': the object, encoded once more
        value = _json(value, what)
    if not isinstance(value, dict):
        raise SpecError(f"{what} must be a JSON object (the profile's `configuration`)")
    return value


def job_config(text: str, what: str = "--job-config") -> dict[str, Any]:
    """The job config: a JSON object with `script` (submitted as written) and optional
    `host`, inline or in a file; a file that is itself a batch script (`#!`) is the script."""
    body = _inline_or_file(text, what)
    if body.startswith("#!"):
        return {"script": body}
    value = _json(body, what)
    if not isinstance(value, dict):
        raise SpecError(f"{what} must be a JSON object")
    if not isinstance(value.get("script"), str) or not value["script"].strip():
        raise SpecError(f'{what} needs "script": the batch script to submit, as written')
    unknown = sorted(set(value) - set(_JOB_KEYS))
    if unknown:  # another tool's keys: said once, not fatal
        log.warning("%s: ignoring key(s) %s (known: %s)", what, ", ".join(unknown)[:200],
                    ", ".join(_JOB_KEYS))
    if value.get("host") is not None and not isinstance(value["host"], str):
        raise SpecError(f'{what}: "host" must be a string')
    return value


def _inline_or_file(text: str, what: str) -> str:
    """Inline JSON (it starts with `{`, `[` or `"`) as is; anything else names a file."""
    if text.lstrip().startswith(("{", "[", '"')):
        return text
    path = Path(text).expanduser()
    try:
        return path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{what}: {text!r} is neither inline JSON nor an existing file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SpecError(f"{what}: cannot read {path}: {reason}") from None


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{what} is not valid JSON: {exc}") from None
