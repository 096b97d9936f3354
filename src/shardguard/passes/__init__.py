"""The scan's stages, one module per kind of step (see ``shardguard.pipeline`` for the order).

* :mod:`.read_embed` -- map, per shard: read, validate, embed into the shard's work file.
* :mod:`.statistics` -- map, per shard: n-gram counts and the per-label statistics
  (reservoir, streaming detectors, candidates' rows), each with a ``merge`` (the reduce).
* :mod:`.index` -- reduce, in global scan order: near-duplicate roots, cluster sizes and
  labels; and reading rows back from the work files by global sequence number.

Every engine (``shardguard.pipeline`` in one process, ``shardguard.ray_engine`` on a Ray
cluster) calls these same functions; none holds a second implementation.
"""
