"""Benchmarks: model throughput, latency, memory and FLOPs."""
