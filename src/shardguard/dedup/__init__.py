"""Near-duplicate detection, in the stages a scan runs it: not a detector (it writes the
``near_duplicate`` and ``duplicate_flood`` reasons through ``shardguard.stages``' verdicts).

* :mod:`~shardguard.dedup.normalize`: ``normalize_text`` and its vectorised forms.
* :mod:`~shardguard.dedup.minhash`: MinHash signatures over character n-grams
  (datasketch-compatible) and the LSH bands x rows for a threshold.
* :mod:`~shardguard.dedup.storage`: what the index keeps (band runs, sketches, exact
  table) and where that memory lives.
* :mod:`~shardguard.dedup.index`: ``NearDuplicateIndex``, the streaming exact +
  near-duplicate index with its roots and statements.
* :mod:`~shardguard.dedup.statements`: whether a near-copy says what its root says,
  and ``index_texts``, which feeds a batch to the index judging labelled rows.
* :mod:`~shardguard.dedup.consensus`: whether near-copies agree on one text (floods
  without a label contradiction).
"""

from __future__ import annotations

from shardguard.dedup.consensus import consensus_agreement
from shardguard.dedup.index import Added, NearDuplicateIndex, SaysSame
from shardguard.dedup.minhash import MinHasher, lsh_params, shingle_hash
from shardguard.dedup.normalize import normalize_codepoints, normalize_text, normalize_texts, normalized
from shardguard.dedup.statements import (
    RootFeatures,
    SeenWords,
    StatementFeatures,
    index_texts,
    label_hashes,
    same_statement,
)

__all__ = [
    "Added",
    "MinHasher",
    "NearDuplicateIndex",
    "RootFeatures",
    "SaysSame",
    "SeenWords",
    "StatementFeatures",
    "consensus_agreement",
    "index_texts",
    "label_hashes",
    "lsh_params",
    "normalize_codepoints",
    "normalize_text",
    "normalize_texts",
    "normalized",
    "same_statement",
    "shingle_hash",
]
