"""Operator tooling: dev tokens, the local system (Consul, control plane, services, Envoy)."""
