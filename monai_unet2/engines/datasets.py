"""Datasets for runs over many cases: one failing case reported instead of fatal (inference, evaluation), and a
cache that fails cleanly (training).

- :class:`IsolatedCases` wraps the dataset of an inference or evaluation: a case whose loading or preprocessing
  fails becomes a failure record (the input and its one-line reason) instead of an exception that ends the run;
  :class:`~monai_unet2.engines.BatchEvaluator` reports it and goes on with the next case. MONAI's datasets and
  ``DataLoader`` have no such mode (an error in one item ends the epoch), and the record is made inside the dataset
  so that it works in ``DataLoader`` worker processes too.
- :class:`SafeCacheDataset` is MONAI's ``CacheDataset`` filling its cache in the main thread when it has one worker
  (MONAI always uses a thread pool, even for ``num_workers=0``). When a case failed in MONAI's pool, the error reached
  the main thread while the pool thread was still inside torch's C++ code on the next case; the process then ended
  with ``terminate called without an active exception`` (exit 134) after the right message. With several workers
  the pool is a ``concurrent.futures`` executor whose queued cases are cancelled and running ones awaited before the
  error is raised.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from monai.data import CacheDataset
from monai.data.utils import pickle_hashing
from monai.utils import optional_import

from monai_unet2.engines.failures import CaseFailedError, CaseFailure, error_chain, is_project_error

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["FAILURE_DETAILS", "FAILURE_KEY", "FAILURE_SOURCE", "IsolatedCases", "SafeCacheDataset", "case_source"]

FAILURE_KEY = "case_failure"
FAILURE_SOURCE = "case_failure_source"
FAILURE_DETAILS = "case_failure_details"


def case_source(entry: Any, source_key: str = "image") -> str:
    """How to name a case in a report: its ``source_key`` path (the first of a list of channel files, with the
    number of the others), else the entry itself.

    Args:
        entry: a datalist entry (``{"image": path, ...}``) or a path.
        source_key: the key of the input file.
    """
    value = entry.get(source_key, entry) if isinstance(entry, Mapping) else entry
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return str(value[0]) + (f" (+{len(value) - 1} channel files)" if len(value) > 1 else "")
    return str(value)


class IsolatedCases(torch.utils.data.Dataset):
    """A dataset whose failing items become failure records instead of exceptions.

    ``dataset[index]`` as is, or, when it raises, ``{FAILURE_KEY: reason, FAILURE_SOURCE: input, FAILURE_DETAILS:
    traceback}`` (plain strings, so they pass any collate function and worker process). The reason is one line that
    names the input (:meth:`~monai_unet2.engines.CaseFailure.from_error`). Use with ``batch_size=1``: a batch must be
    all failures or all cases.

    Args:
        dataset: the dataset to wrap (MONAI ``Dataset``, ``CacheDataset`` ...); its ``data`` (when it has one) names
            the failed input.
        source_key: the key of the input file in the datalist entries.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, source_key: str = "image") -> None:
        self.dataset = dataset
        self.source_key = source_key

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as error:
            data = getattr(self.dataset, "data", None)
            source = case_source(data[index], self.source_key) if data is not None else f"case {index}"
            failure = CaseFailure.from_error(source, error)
            return {FAILURE_KEY: failure.reason, FAILURE_SOURCE: failure.source, FAILURE_DETAILS: failure.details}


def failures_in(batch: Any) -> list[CaseFailure]:
    """The failure records of a collated batch of :class:`IsolatedCases` (empty for a batch of cases).

    Args:
        batch: what the ``DataLoader`` yields.
    """
    if not isinstance(batch, Mapping) or FAILURE_KEY not in batch:
        return []
    as_list = lambda value: list(value) if isinstance(value, (list, tuple)) else [value]  # noqa: E731
    reasons, sources = as_list(batch[FAILURE_KEY]), as_list(batch.get(FAILURE_SOURCE, ""))
    details = as_list(batch.get(FAILURE_DETAILS, ""))
    return [CaseFailure(str(s), str(r), str(d)) for r, s, d in zip(reasons, sources, details)]


class SafeCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` whose cache filling ends cleanly when a case fails (see the module docstring).

    With ``num_workers`` 0 or 1 the cache is filled in the calling thread, one case after the other; with more, in
    a thread pool that is shut down (queued cases cancelled, running ones awaited) before the error is raised. An
    error that does not come from this package's checks is re-raised as
    :class:`~monai_unet2.engines.CaseFailedError` naming the case. Arguments are ``CacheDataset``'s.

    Args:
        data: the datalist.
        transform: the transforms (cached up to the first random one).
        cache_num, cache_rate, num_workers, progress, copy_cache, as_contiguous, hash_as_key, hash_func,
            runtime_cache: those of ``CacheDataset``.
        source_key: the key of the input file in the datalist entries, to name a failed case.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Any = None,
        cache_num: int = sys.maxsize,
        cache_rate: float = 1.0,
        num_workers: int | None = 1,
        progress: bool = True,
        copy_cache: bool = True,
        as_contiguous: bool = True,
        hash_as_key: bool = False,
        hash_func: Callable[..., bytes] = pickle_hashing,
        runtime_cache: Any = False,
        source_key: str = "image",
    ) -> None:
        self.cache_threads = num_workers  # MONAI turns 0 into 1 thread of a pool
        self.source_key = source_key
        super().__init__(
            data=data,
            transform=transform,
            cache_num=cache_num,
            cache_rate=cache_rate,
            num_workers=num_workers,
            progress=progress,
            copy_cache=copy_cache,
            as_contiguous=as_contiguous,
            hash_as_key=hash_as_key,
            hash_func=hash_func,
            runtime_cache=runtime_cache,
        )

    def _load_named(self, index: int) -> Any:
        try:
            return self._load_cache_item(index)
        except Exception as error:
            if any(is_project_error(link) for link in error_chain(error)):
                raise
            raise CaseFailedError(
                CaseFailure.from_error(case_source(self.data[index], self.source_key), error)
            ) from error

    def _fill_cache(self, indices: Sequence[int] | None = None) -> list:
        if self.cache_num <= 0:
            return []
        indices = list(range(self.cache_num)) if indices is None else list(indices)
        bar = tqdm(total=len(indices), desc="Loading dataset") if self.progress and has_tqdm else None
        threads = self.cache_threads
        pool = ThreadPoolExecutor(max_workers=threads) if threads is None or threads > 1 else None
        items = []
        try:
            futures = [pool.submit(self._load_named, index) for index in indices] if pool is not None else None
            for position, index in enumerate(indices):
                items.append(futures[position].result() if futures is not None else self._load_named(index))
                if bar is not None:
                    bar.update()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()  # before an error propagates, so that the error is the last thing printed
        return items
