"""BatchEvaluator: MONAI's ``SupervisedEvaluator`` that survives a bad case, for inference and evaluation over folders.

MONAI's engines end the run at the first exception, as nnU-Net's prediction does: in a folder of 13 inputs with one
bad file, 3 outputs were kept, 9 good inputs never ran, and nothing listed what failed. An overnight run over 1,000
studies must not stop at the first damaged series. :class:`BatchEvaluator` runs every case; a case whose loading
fails (recorded by :class:`~monai_unet2.engines.IsolatedCases`) or whose inference, post-processing or writing raises
is logged with its one-line reason and left out of the metrics, and the next case runs (unless the error is one
every further case would meet, a full disk or a read-only output file system: then the batch stops there and says
how many inputs were not run, instead of running every remaining inference for nothing). At the end, if any case
failed, :class:`~monai_unet2.engines.BatchFailedError` lists each failed input with its reason (so that
``python -m monai.bundle run`` exits non-zero with that list as its last lines, see
:func:`~monai_unet2.engines.report_refusals`). ``stop_on_error=True`` restores MONAI's behaviour: the first failure
ends the run, with :class:`~monai_unet2.engines.CaseFailedError` naming the input.

A failed case skips the handlers of ``Events.ITERATION_COMPLETED`` (metrics, metric savers, progress), which would
otherwise read an output that does not exist; when no case succeeded, ``Events.EPOCH_COMPLETED`` is skipped too
(there is nothing to aggregate). Every other event fires as usual.

Under torchrun (``configs/multi_gpu_inference.json``, ``multi_gpu_evaluate.json``) each rank runs its share of the
cases with its own failure isolation, and the ranks meet twice, whatever happened to their cases: at the end of the
epoch, where they agree whether ``Events.EPOCH_COMPLETED`` fires (on every rank or on none: its metric handlers
gather across ranks, and a rank that skipped them would leave the others waiting), and after it, where the failures of
every rank are gathered. A rank whose cases all failed, or that had none (fewer pending cases than ranks), still
meets the others. Rank 0 then raises :class:`~monai_unet2.engines.BatchFailedError` with every rank's failed inputs,
so torchrun exits non-zero with the whole list, printed once; the other ranks return. A rank must not end early on
its own: torchrun stops every other rank as soon as one exits with an error.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from monai.utils import CommonKeys

from monai_unet2.distributed import gather_objects, is_distributed, is_rank0
from monai_unet2.engines.datasets import IsolatedCases, case_source, failures_in
from monai_unet2.engines.failures import BatchFailedError, CaseFailedError, CaseFailure, error_chain
from monai_unet2.handlers.weights import WeightsFileError

__all__ = ["BatchEvaluator"]

logger = logging.getLogger(__name__)


def _batch_sources(batch: Any, source_key: str, iteration: int) -> str:
    value = batch.get(source_key) if isinstance(batch, Mapping) else None
    names = getattr(value, "meta", {}).get("filename_or_obj") if value is not None else None
    if names is None and value is not None and not isinstance(value, torch.Tensor):
        names = value
    if names is None:
        return f"case {iteration}"
    names = list(names) if isinstance(names, (list, tuple)) else [names]
    return ", ".join(case_source(name) for name in names)


#: errors of the machine, not of a case: every further input would fail the same way
_BATCH_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}


def _stops_the_batch(error: BaseException | None) -> str | None:
    """Why ``error`` ends the batch (a full disk, weights that cannot be used, ...), or ``None`` for an error of one
    case."""
    for link in error_chain(error) if error is not None else ():
        reason = _BATCH_ERRNOS.get(getattr(link, "errno", None))
        if reason:
            return reason
        if isinstance(link, WeightsFileError):  # weights loaded with the first case (fold ensembles)
            return "weights that cannot be used"
    return None


class BatchEvaluator(SupervisedEvaluator):
    """``monai.engines.SupervisedEvaluator`` that reports a failing case and goes on (see the module docstring).

    Takes every argument of ``SupervisedEvaluator``, plus:

    Args:
        args: positional arguments of ``SupervisedEvaluator`` (``device``, ``val_data_loader``, ...).
        stop_on_error: end the run at the first failing case (MONAI's behaviour) instead of going on.
        source_key: the key of the input in the batches, to name a failed case (its ``filename_or_obj``).
        kwargs: keyword arguments of ``SupervisedEvaluator``.

    Attributes:
        failures: the failed cases of the last run, in order.
        processed: the number of cases of the last run that went through.
        stopped: why the last run stopped before its end (an error every further case would meet: a full disk, a
            read-only file system), or ``None``.
    """

    def __init__(self, *args: Any, stop_on_error: bool = False, source_key: str = CommonKeys.IMAGE, **kwargs: Any):
        super().__init__(*args, **kwargs)
        loader = self.data_loader
        if isinstance(getattr(loader, "dataset", None), IsolatedCases) and getattr(loader, "batch_size", 1) != 1:
            raise ValueError("BatchEvaluator over IsolatedCases needs batch_size=1: a batch is one case")
        self.stop_on_error = bool(stop_on_error)
        self.source_key = source_key
        self.failures: list[CaseFailure] = []
        self.processed = 0
        self.stopped: str | None = None
        self._case_failed = False

    def run(self, global_epoch: int = 1) -> None:
        """Run every case; raise :class:`~monai_unet2.engines.BatchFailedError` at the end when any failed.

        Under torchrun, the failures of every rank are raised on rank 0 (see the module docstring).

        Args:
            global_epoch: the trainer's epoch when validating during training.
        """
        self.failures, self.processed, self.stopped = [], 0, None
        if self.state.epoch_length == 0:  # e.g. a resumed batch whose outputs are all finished
            logger.info("no input left to run")
            if is_distributed():  # meet the other ranks at their epoch end
                self._fire_event(Events.EPOCH_COMPLETED)
        else:
            super().run(global_epoch)
        total = self.state.epoch_length or self.processed + len(self.failures)
        outcomes = gather_objects((self.failures, total, self.processed, self.stopped))
        failures = [failure for outcome in outcomes for failure in outcome[0]]
        if failures and is_rank0():
            stopped = next((outcome[3] for outcome in outcomes if outcome[3]), None)
            raise BatchFailedError(
                failures,
                sum(outcome[1] for outcome in outcomes),
                stopped=stopped,
                processed=sum(outcome[2] for outcome in outcomes),
            )

    def _epoch_has_results(self) -> bool:
        """Whether ``Events.EPOCH_COMPLETED`` fires: some case went through; under torchrun, agreed by all ranks."""
        if not is_distributed():
            return bool(self.processed or not self.failures)
        processed = gather_objects(self.processed)
        if not any(processed):
            return False
        if min(processed) == 0 and self.state.key_metric_name is not None:
            logger.error(
                f"no metrics: rank(s) {[rank for rank, count in enumerate(processed) if not count]} processed no case, "
                "and MONAI's metric handlers cannot gather across ranks from a rank without results"
            )
            return False
        return True

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:
        recorded = failures_in(batchdata)
        if recorded:
            for failure in recorded:
                self._fail(failure, None)
            return {}
        try:
            output = super()._iteration(engine, batchdata)
        except Exception as error:
            source = _batch_sources(batchdata, self.source_key, engine.state.iteration)
            self._fail(CaseFailure.from_error(source, error), error)
            return {}
        self.processed += 1
        return output

    def _fail(self, failure: CaseFailure, error: BaseException | None) -> None:
        if self.stop_on_error:
            raise CaseFailedError(failure) from error
        chain = error_chain(error) if error is not None else ()
        weights = next((link for link in chain if isinstance(link, WeightsFileError)), None)
        if weights is not None and self.processed == 0 and not self.failures:
            raise weights  # weights that cannot be used refuse the run, whichever case loaded them first
        self.failures.append(failure)
        self._case_failed = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what a failed case held (e.g. after running out of GPU memory)
        stop = _stops_the_batch(error)
        if stop:
            self.stopped = stop
            self.terminate()
            logger.error(f"input failed, and every further input would too ({stop}): {failure.reason}")
        else:
            logger.error(f"input failed, going on with the next one: {failure.reason}")
        logger.error(f"traceback of the failed input {failure.source}:\n{failure.details}", extra={"file_only": True})

    def _fire_event(self, event_name: Any, *event_args: Any, **event_kwargs: Any) -> None:
        skip = (event_name == Events.ITERATION_COMPLETED and self._case_failed) or (
            event_name == Events.EPOCH_COMPLETED and not self._epoch_has_results()
        )
        if event_name == Events.ITERATION_COMPLETED:
            self._case_failed = False
        if skip:
            self.last_event_name = event_name
            return
        super()._fire_event(event_name, *event_args, **event_kwargs)
