"""One process on the login node per tick, whatever the number of jobs: every active job's
new output, its end marker, and (once a period) every heartbeat file, in one command.

The command is python3 where the login node has it, else perl (both read and write files
themselves: no process per file). Where it has neither, the session falls back to the
transport's own `read_files` (one shell, but `stat`/`tail`/`head` per file). The answer is
text (base64 per read), as every transport's `run` returns text.

A tick's answer is bounded by the bytes actually read (`budget`), not by what each read may
return: a thousand quiet jobs are all read in one tick, a few loud ones cannot make it huge.
Once the budget is spent the command answers `=` and stops; the session reads the rest first
at the next tick.
"""

from __future__ import annotations

from collections.abc import Sequence

# Input on stdin, NUL-separated: `T path` (touch an existing file), `B bytes` (the budget of
# the reads after it), `R path offset limit`.
# Output: one line per read, `-` (no such file) or `+` and the bytes in base64; `=` and no more
# lines once the budget is spent.
PYTHON = r"""import sys,os,base64
a=sys.stdin.buffer.read().split(b"\0");i=0;n=len(a)-1;w=sys.stdout.write;b=1<<62
while i<n:
  k=a[i];i+=1
  if k==b"T":
    try:os.utime(a[i])
    except OSError:pass
    i+=1
  elif k==b"B":b=int(a[i]);i+=1
  elif k==b"R":
    if b<=0:w("=\n");break
    p,o,l=a[i],int(a[i+1]),int(a[i+2]);i+=3
    try:
      with open(p,"rb") as f:f.seek(o);d=f.read(l)
    except OSError:w("-\n");continue
    b-=len(d);w("+"+base64.b64encode(d).decode()+"\n")
  else:break
"""
PERL = r"""use MIME::Base64;binmode STDIN;local $/;my @a=split /\0/,<STDIN>;my $i=0;my $r=2**62;
while($i<@a){my $k=$a[$i++];
 if($k eq "T"){utime(undef,undef,$a[$i++]);}
 elsif($k eq "B"){$r=$a[$i++];}
 elsif($k eq "R"){if($r<=0){print "=\n";last}my($p,$o,$l)=@a[$i..$i+2];$i+=3;my $f;
  if(-f $p && open($f,"<",$p)){binmode $f;seek($f,$o,0);my $d="";read($f,$d,$l);close $f;$r-=length($d);
   print "+",encode_base64($d,""),"\n"}else{print "-\n"}}
 else{last}}
"""
_SELECT = ('if command -v python3 >/dev/null 2>&1; then exec python3 -I -S -c "$1"; '
           'elif command -v perl >/dev/null 2>&1; then exec perl -e "$2"; fi; exit 127')
NO_INTERPRETER = 127


def argv() -> list[str]:
    """The one command: `sh` picks the interpreter with builtins and execs it (no fork)."""
    return ["sh", "-c", _SELECT, "sh", PYTHON, PERL]


def encode(reads: Sequence[tuple[str, int, int]], touches: Sequence[str], budget: int | None = None) -> bytes:
    parts: list[bytes] = []
    for path in touches:
        parts += [b"T", path.encode("utf-8", "surrogateescape")]
    if budget is not None:
        parts += [b"B", str(int(budget)).encode()]
    for path, offset, limit in reads:
        parts += [b"R", path.encode("utf-8", "surrogateescape"), str(int(offset)).encode(),
                  str(int(limit)).encode()]
    return b"\0".join(parts) + b"\0"


def decode(text: str, count: int) -> list[bytes | None]:
    """The reads' answers in order, fewer than `count` when the budget ran out first;
    ValueError when the answer is cut short."""
    import base64

    lines = text.split("\n")
    results: list[bytes | None] = []
    for line in lines[:count]:
        if line == "=":
            return results
        if line == "-":
            results.append(None)
        elif line.startswith("+"):
            results.append(base64.b64decode(line[1:]))
        else:
            raise ValueError("an answer line is malformed")
    if len(results) < count:
        raise ValueError(f"{len(results)} answers for {count} reads")
    return results
