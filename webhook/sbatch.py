"""What a SLURM job asks for, read the way sbatch reads it.

The cluster policy's limits must hold for a verbatim `hpc.offload/script` and for the extra
flags of `hpc.offload/sbatch-args` as much as for the options the webhook renders itself. So
both are read here exactly as sbatch (22.05 and later, src/sbatch/opt.c and
src/common/slurm_opt.c) reads them: `#SBATCH`/`#SLURM` lines up to the first command, split
with sbatch's quoting and `#` comments, `hetjob` separators, then getopt_long — short options,
`--opt value`, and unique prefixes of long options (`--gpus-per-n=8` is `--gpus-per-node`).
Then `measure` counts the nodes and GPUs every option that determines them asks for.

Anything the reading cannot place is a `ScriptError`; the caller refuses it only under a rule
that constrains scripts, so a site without limits accepts every script sbatch accepts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from connector.errors import SpecError
from connector.spec import parse_time_limit

C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale
MAGIC_WORDS = ("#SBATCH", "#SLURM")
HETJOB_WORDS = ("hetjob", "packjob")

# sbatch's long options (union of 22.05 and the current release): R needs a value
# (`--opt=V` or `--opt V`), O takes one only as `--opt=V`, N takes none.
OPTIONS: dict[str, str] = {
    "account": "R", "acctg-freq": "R", "array": "R", "autocomplete": "R", "batch": "R", "bb": "R",
    "bbf": "R", "begin": "R", "chdir": "R", "cluster": "R", "cluster-constraint": "R",
    "clusters": "R", "comment": "R", "consolidate-segments": "N", "constraint": "R",
    "container": "R", "container-id": "R", "context": "R", "contiguous": "N", "core-spec": "R",
    "cores-per-socket": "R", "cpu-freq": "R", "cpus-per-gpu": "R", "cpus-per-task": "R",
    "deadline": "R", "delay-boot": "R", "dependency": "R", "distribution": "R", "error": "R",
    "exclude": "R", "exclusive": "O", "export": "R", "export-file": "R", "external": "N",
    "extra": "R", "extra-node-info": "R", "get-user-env": "O", "gid": "R", "gpu-bind": "R",
    "gpu-freq": "R", "gpus": "R", "gpus-per-node": "R", "gpus-per-socket": "R",
    "gpus-per-task": "R", "gres": "R", "gres-flags": "R", "help": "N", "hint": "R", "hold": "N",
    "ignore-pbs": "N", "input": "R", "job-name": "R", "kill-on-invalid-dep": "R", "licenses": "R",
    "mail-type": "R", "mail-user": "R", "mcs-label": "R", "mem": "R", "mem-bind": "R",
    "mem-per-cpu": "R", "mem-per-gpu": "R", "mem-update": "R", "mincpus": "R", "network": "R",
    "nice": "O", "no-kill": "O", "no-requeue": "N", "nodefile": "R", "nodelist": "R",
    "nodes": "R", "ntasks": "R", "ntasks-per-core": "R", "ntasks-per-gpu": "R",
    "ntasks-per-node": "R", "ntasks-per-socket": "R", "ntasks-per-tres": "R",
    "oom-kill-step": "O", "open-mode": "R", "output": "R", "overcommit": "N",
    "oversubscribe": "N", "parsable": "N", "partition": "R", "power": "R", "prefer": "R",
    "priority": "R", "profile": "R", "propagate": "O", "qos": "R", "quiet": "N", "reboot": "N",
    "requeue": "O", "reservation": "R", "resources": "R", "resv-ports": "O", "runtime": "R",
    "segment": "R", "signal": "R", "sockets-per-node": "R", "spread-job": "N",
    "spread-segments": "N", "stepmgr": "N", "switches": "R", "tasks-per-node": "R",
    "test-only": "N", "thread-spec": "R", "threads-per-core": "R", "time": "R", "time-min": "R",
    "tmp": "R", "tres-bind": "R", "tres-per-task": "R", "uid": "R", "usage": "N",
    "use-min-nodes": "N", "verbose": "N", "version": "N", "wait": "N", "wait-all-nodes": "R",
    "wckey": "R", "wrap": "R",
}
SHORT: dict[str, str] = {
    "A": "account", "a": "array", "b": "begin", "D": "chdir", "M": "clusters", "C": "constraint",
    "S": "core-spec", "c": "cpus-per-task", "d": "dependency", "m": "distribution", "e": "error",
    "x": "exclude", "B": "extra-node-info", "G": "gpus", "h": "help", "H": "hold", "i": "input",
    "J": "job-name", "L": "licenses", "k": "no-kill", "F": "nodefile", "w": "nodelist",
    "N": "nodes", "n": "ntasks", "o": "output", "O": "overcommit", "s": "oversubscribe",
    "p": "partition", "q": "qos", "Q": "quiet", "t": "time", "v": "verbose", "V": "version",
    "W": "wait",
}
ALIASES = {"tasks-per-node": "ntasks-per-node", "ntasks-per-tres": "ntasks-per-gpu",
           "cluster": "clusters"}

# Options that spread a job over nodes chosen by name, by file or by the scheduler at will, or
# multiply it: with node or GPU limits their count is unknown, so they are refused.
NODE_SELECTORS = ("nodelist", "exclude", "nodefile")
UNCOUNTABLE = ("array", "spread-job", "gpus-per-socket", "segment", "resources")

_COUNT = re.compile(r"(\d+)([kKmMgGtT]?)")
_MULTIPLIERS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class ScriptError(ValueError):
    """An option or line the reading cannot place; `message` names it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Directive:
    """One option as sbatch sees it: its long name, its value, and where it was written."""

    name: str
    value: str | None
    source: str  # e.g. 'line 3 "#SBATCH -t 10"' or '"--nodelist=n1"'

    def describe(self) -> str:
        return f"--{self.name}" + (f"={self.value}" if self.value is not None else "")


@dataclass
class Component:
    """One job (a heterogeneous job has several): its options in order; later ones win."""

    directives: list[Directive] = field(default_factory=list)

    def last(self, name: str) -> Directive | None:
        for directive in reversed(self.directives):
            if directive.name == name:
                return directive
        return None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.directives if d.name == name]


# --- reading a script ----------------------------------------------------------------------

def script_components(script: str, where: str = "hpc.offload/script") -> list[Component]:
    """The options of a batch script's `#SBATCH` lines, one Component per hetjob part."""
    components: list[list[tuple[str, str]]] = [[]]
    for lineno, line in enumerate(script.split("\n"), start=1):
        rest = _after_magic(line)
        if rest is None:
            stripped = line.lstrip(C_SPACE)
            if stripped and not stripped.startswith("#"):
                break  # sbatch stops at the first command
            continue
        source = f"{where} line {lineno} ({_shown(line)})"
        if _starts_with_word(rest.lstrip(C_SPACE), HETJOB_WORDS):
            components.append([])
        components[-1] += [(arg, source) for arg in split_arguments(rest, source)]
    return [Component(parse_options(tokens)) for tokens in components]


def _after_magic(line: str) -> str | None:
    for word in MAGIC_WORDS:
        if line.startswith(word):
            return line[len(word):]
    return None


def _starts_with_word(text: str, words: Iterable[str]) -> bool:
    for word in words:
        if text[: len(word)].lower() == word and (len(text) == len(word)
                                                   or text[len(word)] in C_SPACE):
            return True
    return False


def _shown(line: str, limit: int = 80) -> str:
    text = line.strip(C_SPACE)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def split_arguments(text: str, source: str) -> list[str]:
    """sbatch's get_argument(): whitespace-separated words, quotes group, a backslash takes the
    next character as it is; an unquoted `#`, an empty word or a `hetjob` word ends the line."""
    args: list[str] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in C_SPACE:
            pos += 1
        if _starts_with_word(text[pos:], HETJOB_WORDS):
            return args  # blanked by sbatch, which then reads no more of the line
        if pos < end and text[pos] == ":":
            raise ScriptError(f"{source}: an unexpected ':' (sbatch refuses this line)")
        if pos >= end:
            return args
        word: list[str] = []
        quote = ""
        escaped = False
        while pos < end and (quote or text[pos] not in C_SPACE):
            char = text[pos]
            if escaped:
                escaped = False
            elif char == "\\":
                pos += 1
                if pos < end and text[pos] == " ":
                    word.append(" ")
                    pos += 1
                else:
                    escaped = True
                continue
            elif quote:
                if char == quote:
                    quote = ""
                    pos += 1
                    continue
            elif char in "\"'":
                quote = char
                pos += 1
                continue
            elif char == "#":
                pos = end  # the rest of the line is a comment
                break
            word.append(char)
            pos += 1
        if quote:
            raise ScriptError(f"{source}: an unmatched {quote} (sbatch refuses this line)")
        if not word:  # nothing copied (a comment, `""`, `\\<tab>`): sbatch stops the line
            return args
        args.append("".join(word))


def parse_options(tokens: Sequence[tuple[str, str]]) -> list[Directive]:
    """getopt_long over (argument, source) pairs, as sbatch parses its directives."""
    out: list[Directive] = []
    index = 0
    while index < len(tokens):
        arg, source = tokens[index]
        index += 1
        if arg == "--":
            if index < len(tokens):
                raise ScriptError(f"{source}: {tokens[index][0]!r} follows '--' "
                                  "(sbatch refuses it: not an option)")
            break
        if not arg.startswith("-") or arg == "-":
            raise ScriptError(f"{source}: {arg!r} is not an option (sbatch refuses it)")
        if arg.startswith("--"):
            text, eq, value = arg[2:].partition("=")
            name = resolve_long(text, source)
            kind = OPTIONS[name]
            if eq and kind == "N":
                raise ScriptError(f"{source}: --{name} takes no value")
            if not eq:
                value = None  # type: ignore[assignment]
                if kind == "R":
                    if index >= len(tokens):
                        raise ScriptError(f"{source}: --{name} needs a value")
                    value, index = tokens[index][0], index + 1
            out.append(Directive(ALIASES.get(name, name), value, source))
            continue
        pos = 1
        while pos < len(arg):
            letter = arg[pos]
            name = SHORT.get(letter, "")
            if not name:
                raise ScriptError(f"{source}: -{letter} is not an sbatch option")
            kind = OPTIONS[name]
            if kind == "N":
                out.append(Directive(name, None, source))
                pos += 1
                continue
            attached = arg[pos + 1:]
            if attached:
                value = attached
            elif kind == "R":
                if index >= len(tokens):
                    raise ScriptError(f"{source}: -{letter} needs a value")
                value, index = tokens[index][0], index + 1
            else:
                value = None  # type: ignore[assignment]
            out.append(Directive(ALIASES.get(name, name), value, source))
            break
    return out


def resolve_long(text: str, source: str) -> str:
    """A long option's full name: exact, else its unique prefix (getopt_long)."""
    if text in OPTIONS:
        return text
    matches = [name for name in OPTIONS if name.startswith(text)] if text else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ScriptError(f"{source}: --{text} is ambiguous ({', '.join('--' + m for m in matches)});"
                          " write the option out in full")
    raise ScriptError(f"{source}: --{text} is not an sbatch option")


def argument_components(args: Iterable[str], source: str) -> Component:
    """`--opt=value` flags (hpc.offload/sbatch-args) as one Component."""
    return Component(parse_options([(arg, f"{source} {arg!r}") for arg in args]))


# --- counting ------------------------------------------------------------------------------

def parse_count(text: str, directive: Directive) -> int:
    """A count as SLURM writes it: digits with an optional binary k/m/g/t suffix."""
    match = _COUNT.fullmatch(text.strip())
    if not match:
        raise ScriptError(f"{directive.source}: {directive.describe()}: {text!r} is not a count")
    return int(match.group(1)) * _MULTIPLIERS[match.group(2).lower()]


def max_count(directive: Directive) -> int:
    """The largest count in a value such as `4`, `2-64`, `1,2,4`, `1-8:2` (--nodes)."""
    value = directive.value or ""
    numbers = [parse_count(part, directive) for part in re.split(r"[-,:]", value) if part]
    if not numbers or not re.fullmatch(r"[0-9kKmMgGtT,:-]+", value):
        raise ScriptError(f"{directive.source}: {directive.describe()} cannot be counted")
    return max(numbers)


def gpu_count(value: str, directive: Directive, gres: bool = False) -> int:
    """GPUs in `[type:]N[,…]` (--gpus*) or in a GRES list `gpu[:type][:N],mps:…` (--gres,
    --tres-per-task: gres/gpu entries only)."""
    total = 0
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if gres:
            name, _, rest = part.partition(":")
            name = name.lower().removeprefix("gres/")
            if name != "gpu":
                if name.startswith("gpu"):
                    raise ScriptError(f"{directive.source}: {directive.describe()}: "
                                      f"{part!r} cannot be counted")
                continue
            count_text = rest.rsplit(":", 1)[-1] if rest else "1"
            if rest and not _COUNT.fullmatch(count_text):
                count_text = "1"  # gpu:TYPE means one of that type
            total += parse_count(count_text.replace("=", ""), directive)
        else:
            total += parse_count(part.rsplit(":", 1)[-1], directive)
    return total


@dataclass(frozen=True)
class Measure:
    """Nodes, tasks and GPUs one job component can hold, and the options they came from."""

    nodes: int
    tasks: int
    gpus: int
    node_sources: tuple[Directive, ...]
    gpu_sources: tuple[Directive, ...]


def measure(component: Component, default_nodes: int | None = 1) -> Measure:
    """Count nodes and GPUs from every option that determines them. `default_nodes` is what
    the job gets without `--nodes`; None: unknown (a script), so a job of several tasks
    without `--nodes` cannot be counted."""
    for name in UNCOUNTABLE + NODE_SELECTORS:
        found = component.last(name)
        if found is not None:
            raise ScriptError(f"{found.source}: {found.describe()}: with node or GPU limits the "
                              "nodes or GPUs it gives cannot be counted; it is refused")
    nodes_opt = component.last("nodes")
    ntasks_opt = component.last("ntasks")
    per_node_opt = component.last("ntasks-per-node")
    per_gpu_opt = component.last("ntasks-per-gpu")
    ntasks = parse_count(ntasks_opt.value or "", ntasks_opt) if ntasks_opt else None
    per_node = parse_count(per_node_opt.value or "", per_node_opt) if per_node_opt else None
    node_sources = [d for d in (nodes_opt, ntasks_opt, per_node_opt) if d is not None]
    if nodes_opt is not None:
        nodes = max_count(nodes_opt)
    elif default_nodes is not None:
        nodes = default_nodes
    elif (ntasks or 1) > 1 or per_node_opt or per_gpu_opt or component.last("ntasks-per-socket") \
            or component.last("ntasks-per-core"):
        first = next(d for d in (ntasks_opt, per_node_opt, per_gpu_opt,
                                 component.last("ntasks-per-socket"),
                                 component.last("ntasks-per-core")) if d is not None)
        raise ScriptError(f"{first.source}: {first.describe()} without --nodes lets SLURM "
                          "spread the tasks over any number of nodes; set --nodes")
    else:
        nodes = 1
    if ntasks and per_node:
        nodes = max(nodes, math.ceil(ntasks / per_node))
    tasks = max(ntasks or 0, nodes * (per_node or 1))
    gpus, gpu_sources = 0, []
    for name, per in (("gres", nodes), ("gpus", 1), ("gpus-per-node", nodes),
                      ("gpus-per-task", tasks), ("tres-per-task", tasks)):
        directive = component.last(name)
        if directive is None or not directive.value or directive.value.lower() == "none":
            continue
        count = gpu_count(directive.value, directive, gres=name in ("gres", "tres-per-task"))
        if count:
            gpus += count * per
            gpu_sources.append(directive)
    if per_gpu_opt is not None:
        per_gpu = parse_count(per_gpu_opt.value or "", per_gpu_opt)
        if per_gpu < 1:
            raise ScriptError(f"{per_gpu_opt.source}: {per_gpu_opt.describe()} cannot be counted")
        gpus = max(gpus, math.ceil(tasks / per_gpu))
        gpu_sources.append(per_gpu_opt)
    if gpu_sources:
        gpu_sources += [d for d in node_sources if d not in gpu_sources]
    return Measure(nodes, tasks, gpus, tuple(node_sources), tuple(gpu_sources))


def time_limit(directive: Directive) -> int:
    """Seconds of a --time value; 0 = unlimited (UNLIMITED, INFINITE, -1)."""
    value = (directive.value or "").strip()
    if value.upper() in ("UNLIMITED", "INFINITE", "-1"):
        return 0
    try:
        return parse_time_limit(value, directive.describe())
    except SpecError:
        raise ScriptError(f"{directive.source}: {directive.describe()} is not a time limit "
                          "the policy can compare") from None
