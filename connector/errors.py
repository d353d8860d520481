"""Errors the connector reports to a person, each with the exit code it ends with."""

from __future__ import annotations


class ConnectorError(Exception):
    """An error with a clear message and the process exit code it maps to."""

    exit_code = 1
    reason = "ConnectorError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpecError(ConnectorError):
    """The job spec or an annotation value is invalid (nothing was submitted)."""

    exit_code = 64  # EX_USAGE
    reason = "InvalidJobSpec"


class ProfileError(ConnectorError):
    """The backend profile is missing, malformed or names an unknown backend."""

    exit_code = 78  # EX_CONFIG
    reason = "InvalidProfile"


class HostKeyError(ConnectorError):
    """The HPC host's key is unknown or does not match known_hosts (strict checking)."""

    exit_code = 77  # EX_NOPERM
    reason = "HostKeyRejected"


class AuthError(ConnectorError):
    """The HPC side refused our credential (key, token, proxy): retrying cannot help until the
    profile's Secret changes, so a submission ends at once (a running job is still followed:
    the credential is re-read at every reconnect)."""

    exit_code = 77  # EX_NOPERM
    reason = "AuthenticationRefused"


class UnreachableError(ConnectorError):
    """The HPC side stayed unreachable for the profile's `submit_timeout`: nothing submitted."""

    exit_code = 69  # EX_UNAVAILABLE
    reason = "HPCUnreachable"


class TransientError(ConnectorError):
    """A fault that may pass (network, daemon restart): retried with backoff."""

    exit_code = 69  # EX_UNAVAILABLE
    reason = "BackendUnavailable"


class BackendError(ConnectorError):
    """The workload manager refused a request (bad option, unknown partition, …)."""

    exit_code = 69
    reason = "BackendRefused"


class InternalError(ConnectorError):
    """A bug in the connector: reported like any error, never as a traceback."""

    exit_code = 70  # EX_SOFTWARE
    reason = "ConnectorBug"
