"""Maps over shards whose results merge: n-gram counts and the per-label statistics.

Each function reads one shard's work file and returns a state with a ``merge``; the
engine reduces them in scan order (``a.merge(b)``). In-scan-order merging makes the
floating-point sums of the streaming detectors the same whichever engine ran the maps,
so the engines' lists are identical, not merely close.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from sklearn.base import clone

from shardguard.config import Config
from shardguard.detectors import EmbeddingDetector
from shardguard.detectors.ngram_stats import TOKENIZER_VERSION, CandidateGatherer, Candidates, NgramCounter, NgramCounts
from shardguard.io import workfile
from shardguard.io.writers import atomic_write_json
from shardguard.passes.read_embed import embedding_dim, responses_of
from shardguard.stages import ReservoirSample, text_kwargs

log = logging.getLogger(__name__)


def count_shard_ngrams(path: Path, key: str) -> NgramCounts:
    """One shard's n-gram document frequencies per label, from its work file's valid rows.

    Kept in ``<work dir>/ngrams/<shard>/`` beside the work file under ``key`` (the shard's
    pass-1 key), so a resumed run reuses them.
    """
    d = path.parent / "ngrams" / path.stem
    meta_file = d / "counts.json"
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("key") == key and meta.get("tokenizer_version") == TOKENIZER_VERSION \
                and all(Path(r).exists() for r in meta["runs"]):
            return NgramCounts.from_json(meta)
    except (OSError, ValueError, KeyError):
        pass
    if d.exists():
        for old in d.iterdir():
            old.unlink()
    counter = NgramCounter(d)
    with workfile.WorkFileReader(path) as reader:
        for batch in reader:
            vb = batch.filter(batch.column("detail").is_null())
            if vb.num_rows:
                counter.add(vb.column("text").to_pylist(), vb.column("label").to_pylist())
    counts = counter.finish()
    atomic_write_json(meta_file, {"key": key, **counts.to_json()})
    return counts


@dataclass
class StatisticsSpec:
    """What the statistics map needs besides the shard: the same for every shard.

    ``streaming``: the unfitted streaming detectors (each shard fits a clone);
    ``candidates``: per trigger detector, the candidate n-grams whose rows are gathered.
    """

    reservoir_size: int
    random_state: int
    keep_text: bool
    streaming: Mapping[str, EmbeddingDetector] = field(default_factory=dict)
    candidates: Mapping[str, Candidates] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Config, detectors: Mapping[str, EmbeddingDetector],
           candidates: Mapping[str, Candidates]) -> "StatisticsSpec":
        return cls(config.fit.reservoir_size, config.random_state,
                   any(getattr(d, "needs_text", False) for d in detectors.values()),
                   {n: d for n, d in detectors.items() if d.streaming}, dict(candidates))

    def empty(self, reservoir: ReservoirSample | None = None) -> "ShardStatistics":
        """Empty statistics; with ``reservoir``, ones that offer their rows to that reservoir."""
        if reservoir is None:
            reservoir = ReservoirSample(self.reservoir_size, self.random_state, keep_text=self.keep_text)
        return ShardStatistics(reservoir,
                               {n: clone(d) for n, d in self.streaming.items()},
                               {n: CandidateGatherer(c) for n, c in self.candidates.items()})


@dataclass
class ShardStatistics:
    """The per-label statistics of part of the stream: the reservoir sample, the streaming
    detectors' partial fits and the rows carrying candidate n-grams. :meth:`merge` adds the
    statistics of the next part (in scan order)."""

    reservoir: ReservoirSample
    streaming: dict[str, EmbeddingDetector]
    gatherers: dict[str, CandidateGatherer]

    def merge(self, other: "ShardStatistics") -> "ShardStatistics":
        if other.reservoir is not self.reservoir:  # the same one when the shards shared it
            self.reservoir.merge(other.reservoir)
        for name, det in self.streaming.items():
            det.merge(other.streaming[name])
        for name, g in self.gatherers.items():
            g.merge(other.gatherers[name])
        return self


def shard_statistics(path: Path, seq0: int, spec: StatisticsSpec,
                     reservoir: ReservoirSample | None = None) -> ShardStatistics:
    """The statistics of one shard's valid rows, whose global sequence numbers start at ``seq0``.

    ``reservoir``: offer the rows to this reservoir (one shared by every shard of an
    in-process scan, merged once) instead of a new one of the shard's own."""
    st = spec.empty(reservoir)
    seq = seq0
    with workfile.WorkFileReader(path) as reader:
        dim = embedding_dim(reader.schema)
        if dim is None:
            return st
        for batch in reader:
            vb = batch.filter(batch.column("detail").is_null())
            n = vb.num_rows
            if n == 0:
                continue
            seqs = seq + np.arange(n, dtype=np.int64)
            seq += n
            X = workfile.embeddings_from_arrow(vb.column("embedding"), dim)
            y = vb.column("label").to_numpy(zero_copy_only=False)
            texts = vb.column("text").to_numpy(zero_copy_only=False) if spec.keep_text or st.gatherers else None
            responses = responses_of(vb) if spec.keep_text else None
            st.reservoir.add(X, y, texts if spec.keep_text else None, seqs, responses)
            for det in st.streaming.values():
                det.partial_fit(X, y, **text_kwargs(det, texts))
            for g in st.gatherers.values():
                g.add(texts.tolist(), seqs)
    return st
