"""Benchmarks: shopmesh against the classic Python design (bench/baseline)."""
