"""How the connector reaches the HPC side: commands and files, locally or over SSH."""

from connector.transport.base import CommandResult, Transport

__all__ = ["CommandResult", "Transport"]
