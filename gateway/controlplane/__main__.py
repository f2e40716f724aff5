"""`python -m gateway.controlplane`: serve Consul's endpoints to Envoy over ADS."""

import sys

from services.common import lean  # noqa: F401  (first: see its docstring)

# isort: split
from gateway.controlplane.config import ControlPlaneConfig
from gateway.controlplane.service import create
from services.common.server import main

sys.exit(main("controlplane", ControlPlaneConfig, create))
