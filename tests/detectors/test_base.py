"""Label handling shared by the detectors: strings kept as they are, others stringified,
groups in order of first occurrence."""

from __future__ import annotations

import numpy as np
import pytest

from shardguard.detectors.base import as_labels, label_groups


def test_as_labels_keeps_strings_and_stringifies_the_rest():
    y = np.array(["pos", None, "neg"], dtype=object)
    assert as_labels(y, 3).tolist() == ["pos", None, "neg"]
    assert as_labels([1, 0, None], 3).tolist() == ["1", "0", None]
    assert as_labels(np.array([1.5, 2.0]), 2).tolist() == ["1.5", "2.0"]
    assert as_labels(None, 4) is None
    with pytest.raises(ValueError, match="shape"):
        as_labels(["a", "b"], 3)


def test_label_groups_round_trip_in_first_occurrence_order():
    labels = np.array(["b", "a", None, "b", "c", None, "a"], dtype=object)
    codes, keys = label_groups(labels)
    assert keys == ["b", "a", None, "c"]
    assert [keys[c] for c in codes] == labels.tolist()
    codes, keys = label_groups(np.array([], dtype=object))
    assert codes.shape == (0,) and keys == []
