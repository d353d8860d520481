"""A click group whose sub-commands are imported on first use.

`--help` stays fast, a connector image never loads the webhook's libraries, and a command
whose optional extra is not installed still answers, whatever its arguments, with the
`pip install` line that brings it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Entry:
    """One sub-command: where it lives, its one-line help, and what it needs installed."""

    target: str  # "module:attribute" of a click command or group
    help: str
    extra: str | None = None  # the pyproject extra that brings `needs`
    needs: tuple[str, ...] = ()  # top-level modules imported only when it runs


class LazyGroup(click.Group):
    """A group over a fixed table of `Entry`s (`commands_table`)."""

    def __init__(self, *args: object, commands_table: Mapping[str, Entry], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.table = dict(commands_table)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.table)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = self.table.get(cmd_name)
        if entry is None:
            return None
        missing = next((name for name in entry.needs if importlib.util.find_spec(name) is None), None)
        if missing is not None:
            return unavailable(cmd_name, entry, missing)
        module_name, _, attr = entry.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a dependency of an optional extra is not installed
            if (exc.name or "").partition(".")[0] == module_name.partition(".")[0]:
                raise  # our own module is missing: a broken install, not a missing extra
            return unavailable(cmd_name, entry, exc.name or module_name)
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.help) for name, entry in sorted(self.table.items())])


def unavailable(name: str, entry: Entry, module: str) -> click.Command:
    """A stand-in that takes any arguments (even `-f x`, `--help`) and names the extra."""
    extra = entry.extra or "webhook"

    @click.command(name=name, help=entry.help, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def missing(args: tuple[str, ...]) -> None:
        raise click.ClickException(
            f"'{name}' needs a part that is not installed ({module}); "
            f"install it with: pip install 'hpc-offload[{extra}]'")

    return missing
