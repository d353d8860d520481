"""`kubectl-hpc`: the kubectl plugin (`kubectl hpc render`, `kubectl hpc jobs`)."""

from __future__ import annotations

from hpc_cli.main import cli


def main() -> None:
    cli(prog_name="kubectl hpc")


if __name__ == "__main__":
    main()
