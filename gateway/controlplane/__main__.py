"""`python -m gateway.controlplane`: serve Consul's endpoints to Envoy over ADS."""

import sys

from gateway.controlplane.service import ControlPlaneConfig, create
from services.common.server import main

sys.exit(main("controlplane", ControlPlaneConfig, create))
