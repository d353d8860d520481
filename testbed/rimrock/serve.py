"""`python -m testbed.rimrock.serve CONFIG USER BIND…`: the server in gunicorn (no file).

The master starts as root (this machine's interpreter lives under /root, which no other
user can read) and binds; its worker switches to USER before it loads the app, so requests,
the SSH key and the job database are handled unprivileged. Everything the worker imports is
imported by the master first, as the worker cannot read the interpreter's files.
One gthread worker: the per-user SSH session limit (Rimrock's pool of 5) is a semaphore in
that process. Header fields up to 20 KiB (Rimrock's `max.header.size.bytes`: the PROXY
header carries a whole proxy), bodies up to 1 MiB, a worker stuck for 60 s is replaced.
The access log has no headers, so no proxy reaches it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any


def options(user: str, binds: list[str]) -> dict[str, Any]:
    return {
        "bind": binds,
        "user": user,
        "group": user,
        "initgroups": True,  # only the user's own groups, none of root's
        "workers": 1,
        "worker_class": "gthread",
        "threads": 8,
        "timeout": 60,
        "graceful_timeout": 10,
        "keepalive": 30,
        "limit_request_line": 8190,
        "limit_request_fields": 50,
        "limit_request_field_size": 20480,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "rimrock-testbed",
        "control_socket_disable": True,  # gunicorn >= 25 would open $HOME/.gunicorn
    }


def main(argv: list[str]) -> None:
    import email.utils  # noqa: F401 - imported here: the worker could not read them later
    import encodings.idna  # noqa: F401
    import mimetypes  # noqa: F401

    from gunicorn.app.base import BaseApplication
    from gunicorn.workers import gthread  # noqa: F401

    from .app import Config, create_app

    if len(argv) < 4:
        sys.exit("usage: python -m testbed.rimrock.serve CONFIG USER BIND [BIND…]")
    config = Config.load(Path(argv[1]))
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s [rimrock] %(levelname)s %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    settings = options(argv[2], argv[3:])

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in settings.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(config)

    Server().run()


if __name__ == "__main__":
    main(sys.argv)
