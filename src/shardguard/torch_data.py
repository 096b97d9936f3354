"""A torch ``IterableDataset`` that lets only clean samples through a fitted guard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from torch.utils.data import IterableDataset

if TYPE_CHECKING:
    from shardguard.guard import Guard


class GuardedIterableDataset(IterableDataset):
    """Yields the samples of ``source`` (dicts holding the configured columns) that the guard keeps.

    Samples are scored ``batch_size`` at a time and yielded unchanged, in order.
    """

    def __init__(self, guard: "Guard", source: Iterable[Mapping[str, Any]], batch_size: int = 256):
        super().__init__()
        self.guard = guard
        self.source = source
        self.batch_size = batch_size

    def _flush(self, buf: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        columns = {k: [s.get(k) for s in buf] for k in buf[0]}
        for sample, keep in zip(buf, self.guard.keep_mask(columns)):
            if keep:
                yield sample

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        buf: list[Mapping[str, Any]] = []
        for sample in self.source:
            buf.append(sample)
            if len(buf) == self.batch_size:
                yield from self._flush(buf)
                buf = []
        if buf:
            yield from self._flush(buf)
