"""A torch ``IterableDataset`` that lets only clean samples through a fitted guard."""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from torch.utils.data import IterableDataset, get_worker_info

if TYPE_CHECKING:
    from shardguard.guard import Guard


class GuardedIterableDataset(IterableDataset):
    """Yields the samples of ``source`` (dicts holding the configured columns) that the guard keeps.

    Samples are scored ``batch_size`` at a time and yielded unchanged, in order. In a
    DataLoader worker (``get_worker_info()``), worker ``i`` of ``k`` takes samples
    ``i, i + k, i + 2k, ...`` of the source -- indexed directly when the source is a
    sequence, every ``k``-th sample of its iteration otherwise -- so the workers
    together yield each sample once (unless ``split_workers`` is False: a source that
    splits itself). Pickling the dataset (spawn, forkserver) pickles the guard without
    its model; each worker loads its own.
    """

    def __init__(self, guard: "Guard", source: Iterable[Mapping[str, Any]], batch_size: int = 256,
                 split_workers: bool = True):
        super().__init__()
        self.guard = guard
        self.source = source
        self.batch_size = batch_size
        self.split_workers = split_workers

    def _flush(self, buf: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        columns = {k: [s.get(k) for s in buf] for k in buf[0]}
        for sample, keep in zip(buf, self.guard.keep_mask(columns)):
            if keep:
                yield sample

    def _samples(self) -> Iterable[Mapping[str, Any]]:
        info = get_worker_info()
        if info is None:
            return self.source
        self.guard._in_this_process(warn=info.num_workers > 1)
        if not self.split_workers or info.num_workers == 1:
            return self.source
        if isinstance(self.source, Sequence) or (hasattr(self.source, "__getitem__") and hasattr(self.source, "__len__")):
            src: Any = self.source
            return (src[i] for i in range(info.id, len(src), info.num_workers))
        return islice(self.source, info.id, None, info.num_workers)

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        buf: list[Mapping[str, Any]] = []
        for sample in self._samples():
            buf.append(sample)
            if len(buf) == self.batch_size:
                yield from self._flush(buf)
                buf = []
        if buf:
            yield from self._flush(buf)
