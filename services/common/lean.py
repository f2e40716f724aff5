"""Imported first by each service's (and the control plane's) `__main__`: keeps a
service process from loading what it never uses.

nats-py imports aiohttp whenever it is installed (the dev extra installs it, for
bench/load.py), for its WebSocket transport; our NATS URLs are nats:// or tls:// only
(services.common.config refuses the rest), so the about 8 MB aiohttp costs each
NATS-using process buy nothing. With aiohttp marked absent nats-py takes its "not
installed" path. Only in a service's own process: a test or the bench, which may use
aiohttp, never imports this.
"""

import sys

sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]
