"""Benchmark helpers: planting published poisoning attacks into real datasets
(:mod:`shardguard.bench.attacks`), a text-keyed embedding cache
(:mod:`shardguard.bench.embcache`) and a running Ray cluster
(:mod:`shardguard.bench.ray_cluster`). Used by ``benchmarks/`` and the tests."""
