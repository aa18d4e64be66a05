"""monai_unet2.engines: running a bundle over many cases, and how a run ends when something is wrong.

- :class:`BatchEvaluator` (``evaluator``): MONAI's ``SupervisedEvaluator`` that reports a failing case and goes on,
  then lists every failed input with its reason (:class:`BatchFailedError`); ``stop_on_error`` restores MONAI's
  stop at the first error.
- :class:`IsolatedCases`, :class:`SafeCacheDataset` (``datasets``): a dataset whose failing items become failure
  records; a ``CacheDataset`` whose cache filling ends cleanly when a case fails (no ``terminate called ...``).
- :func:`batch_datalist` (``batch``): the inputs of a batch checked before anything runs: inputs confined to the
  input folder, skipped files named, output name collisions, a writable output folder, finished outputs on resume.
- :func:`report_refusals` (``refusals``): a failing run ends with one line naming the file and the problem, the
  traceback in the log file; :func:`describe_error` (``failures``) finds that line under MONAI's wrappers.
"""

from .batch import batch_datalist, check_writable, links_out_of
from .datasets import IsolatedCases, SafeCacheDataset, case_source
from .evaluator import BatchEvaluator
from .failures import BatchFailedError, CaseFailedError, CaseFailure, describe_error, error_chain
from .refusals import ConsoleTracebackFilter, refusal_text, report_refusals

__all__ = [
    "BatchEvaluator",
    "BatchFailedError",
    "CaseFailedError",
    "CaseFailure",
    "ConsoleTracebackFilter",
    "IsolatedCases",
    "SafeCacheDataset",
    "batch_datalist",
    "case_source",
    "check_writable",
    "describe_error",
    "error_chain",
    "links_out_of",
    "refusal_text",
    "report_refusals",
]
