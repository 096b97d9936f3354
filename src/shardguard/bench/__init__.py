"""Benchmark helpers: planting published poisoning attacks into real datasets
(:mod:`shardguard.bench.attacks`) and a text-keyed embedding cache
(:mod:`shardguard.bench.embcache`). Used by ``benchmarks/poison_bench.py`` and the tests."""
