"""What went wrong, in one line: the reason a case or a run failed, found under the wrappers that hide it.

An error raised while MONAI runs a bundle arrives wrapped several times: ``RuntimeError: applying transform ...``
(``Compose``), ``RuntimeError: Failed to instantiate component ...`` (the config parser, with every keyword of the
component in the message), ``RuntimeError: Failed to evaluate ConfigExpression ...`` (the ``run`` expression). The
sentence a user needs, "``/data/x.nii.gz: cannot read image (a text file)``", is the message of the error at the
bottom of that chain. :func:`describe_error` walks the chain (``raise ... from``: ``__cause__``; every one of
those wrappers chains that way) and returns that sentence; nothing in MONAI or Python does this. An error raised
while handling another without ``from`` is a new error, not a wrapper: its own message is the reason.

Errors defined by this package (``VolumeFileError``, ``DicomSeriesError``, ``DatalistError``, ``OutputWriteError``,
...) are written to be shown as they are: the outermost of them in the chain wins, because it is the one that put the
lower-level cause into words (``VolumeFileError`` around nibabel's ``EOFError``). Without one, the innermost error is
shown as ``Type: message``.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "BatchFailedError",
    "CaseFailedError",
    "CaseFailure",
    "describe_error",
    "error_chain",
    "format_traceback",
    "is_project_error",
]

PACKAGE = "monai_unet2"


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from (``__cause__``, recursively), outermost first, each once.

    Args:
        error: the error that reached the caller.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _one_line(text: str) -> str:
    return " ".join(text.split())


def is_project_error(error: BaseException) -> bool:
    """Whether ``error`` is one of this package's errors, whose messages are written to be shown as they are."""
    return type(error).__module__.split(".")[0] == PACKAGE


def describe_error(error: BaseException) -> str:
    """The one-line reason for ``error``: the message of the outermost error of this package in its chain, else
    ``Type: message`` of the innermost error (the original cause, under MONAI's and the config parser's wrappers).

    Args:
        error: the error that reached the caller (e.g. ``RuntimeError: Failed to evaluate ConfigExpression``).
    """
    chain = list(error_chain(error))
    for link in chain:
        if is_project_error(link) and str(link).strip():
            return _one_line(str(link))
    innermost = chain[-1]
    message = _one_line(str(innermost))
    return f"{type(innermost).__name__}: {message}" if message else type(innermost).__name__


def format_traceback(error: BaseException) -> str:
    """The full traceback of ``error`` with its chain, as Python prints it."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


@dataclass(frozen=True)
class CaseFailure:
    """One input of a batch that produced no output.

    Attributes:
        source: the input (an image file, a DICOM series folder, or a description of the case).
        reason: one line saying why, naming the file.
        details: the traceback, for the log file.
    """

    source: str
    reason: str
    details: str = ""

    @classmethod
    def from_error(cls, source: str, error: BaseException) -> CaseFailure:
        """The failure of ``source`` by ``error``: the reason names ``source`` when the error's message does not.

        Args:
            source: the input being processed.
            error: what was raised while processing it.
        """
        reason = describe_error(error)
        names = {source, os.path.basename(os.path.normpath(source))} - {""}
        if not any(name in reason for name in names):
            reason = f"{source}: {reason}"
        return cls(source, reason, format_traceback(error))


class CaseFailedError(RuntimeError):
    """An input failed and the run stops there (``stop_on_error``); the message is the input's one-line reason.

    Args:
        failure: the failure that stopped the run.
    """

    def __init__(self, failure: CaseFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class BatchFailedError(RuntimeError):
    """Some inputs of a batch failed; every other input was processed. The message lists each failed input with its
    reason, one per line, after a count.

    Args:
        failures: the failed inputs, in processing order.
        total: the number of inputs of the batch.
        done: what was done with the others, e.g. ``"segmented, outputs in /out"``.
        stopped: why the batch stopped before its end (an error every further input would meet), if it did.
        processed: the number of inputs that went through, when it is not ``total`` minus the failures.
    """

    def __init__(
        self,
        failures: Sequence[CaseFailure],
        total: int,
        done: str = "processed",
        stopped: str | None = None,
        processed: int | None = None,
    ) -> None:
        self.failures = list(failures)
        self.total = total
        self.stopped = stopped
        succeeded = total - len(self.failures) if processed is None else processed
        status = f"{succeeded} {done}"
        if stopped:
            status += f", {total - succeeded - len(self.failures)} not run: the batch stopped at {stopped}"
        lines = [f"{len(self.failures)} of {total} inputs failed ({status}); each failed input and why:"]
        lines += [f"  {failure.reason}" for failure in self.failures]
        super().__init__("\n".join(lines))
