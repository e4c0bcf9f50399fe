"""Benchmarks: model throughput, latency, memory and FLOPs (`fastvits bench`).

- `measure`: timing with machine-load sampling, interleaved rounds, peak memory, GMACs, GEMM roof.
- `backends`: models (fastvits, official FasterViT, timm) prepared for eager / compile / onnxruntime.
- `suite`: a group of runners timed round-robin on one input; the models x sizes x batches loop.
- `report`: table, CSV with timm's column names, JSON, Pareto plot.
- `cli`: the `fastvits bench [MODE]` command line.
"""
