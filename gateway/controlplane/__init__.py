"""The xDS control plane: Consul's healthy (and unhealthy) instances as Envoy endpoints."""
