"""`python -m services.reporting`: run the reporting service. With --rebuild (and the
other settings as usual, naming a new database), rebuild its read model from the stream's
start into that database and exit (services.reporting.rebuild)."""

import sys

from services.common import lean  # noqa: F401  (first: see its docstring)
from services.common.server import main
from services.reporting import rebuild
from services.reporting.config import ReportingConfig
from services.reporting.nats_source import create

if "--rebuild" in sys.argv[1:]:
    sys.exit(rebuild.main([a for a in sys.argv[1:] if a != "--rebuild"]))
sys.exit(main("reporting", ReportingConfig, create))
