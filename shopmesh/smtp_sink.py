"""`python -m shopmesh.smtp_sink`: a local SMTP server that delivers every message it
accepts into a Maildir (new/ holds one file per message), for `shopmesh run` and the
tests, so that the notification service talks real SMTP with no mail server installed.

aiosmtpd's server and its Mailbox handler (the standard library's mailbox.Maildir: each
message written under tmp/ and renamed into new/, so a reader never sees half of one).
It accepts any sender and recipient and relays nothing. Flags as a service's
(`--port`, `--ready-file`), so shopmesh.processes.ServiceProcess runs it: the ready file
names the bound port once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP

from shopmesh.processes import ServiceProcess

log = logging.getLogger("smtp_sink")

MODULE = "shopmesh.smtp_sink"


async def start_sink(
    maildir: pathlib.Path, host: str = "127.0.0.1", port: int = 0
) -> tuple[asyncio.Server, int]:
    """The sink serving on this event loop (the unit tests' in-process one), and its port."""
    # mailbox.Maildir makes tmp/, new/ and cur/ only when it makes the folder itself.
    for part in ("tmp", "new", "cur"):
        (maildir / part).mkdir(parents=True, exist_ok=True)
    handler = Mailbox(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), host, port)
    return server, int(server.sockets[0].getsockname()[1])


async def serve(
    maildir: pathlib.Path, host: str, port: int, ready_file: pathlib.Path | None
) -> None:
    server, bound = await start_sink(maildir, host, port)
    loop = asyncio.get_running_loop()
    log.info("SMTP sink on %s:%d delivering into %s (pid %d)", host, bound, maildir, os.getpid())
    if ready_file is not None:
        partial = ready_file.with_suffix(".partial")
        partial.write_text(json.dumps({"port": bound, "pid": os.getpid()}))
        partial.replace(ready_file)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    server.close()
    await server.wait_closed()
    log.info("SMTP sink stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--maildir", type=pathlib.Path, default=pathlib.Path("var/mail"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free one")
    parser.add_argument("--ready-file", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s smtp-sink %(message)s")
    asyncio.run(serve(args.maildir, args.host, args.port, args.ready_file))
    return 0


def sink_process(workdir: pathlib.Path, maildir: pathlib.Path, port: int = 0) -> ServiceProcess:
    """The sink as a part of a system or a test: start() it, wait_ready(), then its
    `target` is host:port; stop() stops it by PID."""
    return ServiceProcess(
        "smtp-sink", workdir, port=port, settings={"maildir": str(maildir)}, module=MODULE
    )


if __name__ == "__main__":
    sys.exit(main())
