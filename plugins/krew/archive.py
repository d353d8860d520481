"""Make the krew archive of `kubectl hpc` (the kubectl-hpc launcher) reproducibly, and print
its sha256 for hpc.yaml: `python plugins/krew/archive.py [OUT]`.

The bytes depend only on the files: names sorted, owner 0, mode from the file, mtime 0 and a
gzip header without a time, so the sha256 in hpc.yaml can be checked by a test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ("kubectl-hpc",)
DEFAULT_OUT = HERE.parent.parent / "dist" / "kubectl-hpc-krew.tar.gz"


def archive_bytes() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(FILES):
            data = (HERE / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    data = archive_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"{hashlib.sha256(data).hexdigest()}  {out}")


if __name__ == "__main__":
    main()
