"""Whether near-copies agree on one text, on real rows."""

from __future__ import annotations

import numpy as np


def test_consensus_agreement_tells_edited_copies_from_a_filled_frame(shared_data):
    """Real rows: 60 typo'd copies (1-3 letter edits, as the flood benchmark plants) of
    Wikipedia paragraphs and Alpaca answers agree on one text, the original among them or
    not; Wikipedia's own rows filling one frame ("<name> may refer to:", "The list of
    shipwrecks in <month> <year> includes ...") do not."""
    import re

    import pyarrow.parquet as pq

    from shardguard.bench.attacks import typo
    from shardguard.dedup import consensus_agreement

    wiki = pq.read_table(shared_data / "wikipedia_2021" / "train.parquet", columns=["text"]).column(0)
    alpaca = pq.read_table(shared_data / "alpaca_full" / "train.parquet", columns=["output"]).column(0)
    rng = np.random.default_rng(11)
    for texts in (wiki, alpaca):
        picks = [t for t in texts.take(rng.choice(len(texts), 40, replace=False)).to_pylist() if len(t) >= 12][:6]
        for k, base in enumerate(picks):
            copies = [typo(base, rng) for _ in range(60)]
            assert consensus_agreement(([base] if k % 2 else []) + copies) >= 0.7, base
    # openings that Wikipedia writes for many articles (each a cluster of 170-270 rows)
    frames = (r"\S+ may refer to:$", r"The \d{4} World Table Tennis Championships",
              r"The list of shipwrecks in ", r"In 18\d1 the population of the townland was")
    for frame in frames:
        rows = [t for t in wiki.to_pylist() if re.match(frame, t)][:64]
        assert len(rows) == 64 and consensus_agreement(rows) < 0.3, frame
