"""How a bundle run that fails ends: one sentence naming the file and the problem, the traceback in a log file.

``python -m monai.bundle run`` has no error handling of its own: an input the project refuses ends the process with
Python's traceback of the whole chain (``VolumeFileError`` inside ``RuntimeError: applying transform`` inside
``RuntimeError: Failed to evaluate ConfigExpression``), after ignite and every ``StatsHandler`` have logged it with
their own tracebacks: 240-570 lines in which the reason appears three times, and the last line is MONAI's. The project
cannot change MONAI's command line, and errors raised while the config is resolved (a missing dataset folder, an
unwritable output folder) happen before any engine of ours runs, so the exit path is owned where Python owns it:
:func:`report_refusals`, an ``initialize`` step of the bundles' configs, installs

- a ``sys.excepthook`` that prints, for an error that ends the process, a pointer to the log file and then the
  one-line reason (:func:`~monai_unet2.engines.failures.describe_error`; for a batch, the list of failed inputs) as
  the last lines on the console, writes the full traceback to the run's log file, and leaves the exit status
  non-zero (1, Python's status for an uncaught error). ``KeyboardInterrupt`` prints one line saying that what was
  written is complete and ``--resume True`` goes on (Python still ends the process as interrupted); other
  non-``Exception`` errors keep Python's handling;
- a filter on the console handlers (of every logger: MONAI's ``StatsHandler`` logs through its own, which does not
  propagate) that keeps the engines' copies of the error off the console: ``StatsHandler``'s ``Exception: ...``
  with its traceback, ignite's "run is terminating due to exception" lines, and records logged with
  ``extra={"file_only": True}`` (the per-case tracebacks of :class:`~monai_unet2.engines.BatchEvaluator`). Every
  other record passes; file handlers still get them all.

The log file is the run's own when one is set up (any ``logging.FileHandler`` on the root logger, e.g. the one
``monai_unet2.console.configure`` adds), else ``<output_dir>/logs/error_<time>_<pid>.log``, written only when a run
fails. ``--debug True`` prints the traceback once on the console as well (the per-case ones of a batch as they
happen).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from monai.apps.utils import get_logger

from monai_unet2.engines.failures import (
    BatchFailedError,
    describe_error,
    error_chain,
    format_traceback,
    is_project_error,
)

__all__ = ["ConsoleTracebackFilter", "refusal_text", "report_refusals"]

logger = logging.getLogger(__name__)

STATS_LOGGER = "monai.handlers.StatsHandler"  # the default name of StatsHandler's logger (it does not propagate)
_TERMINATING = re.compile(r"^(Current|Engine) run is terminating due to exception")
_ENGINE_EXCEPTION = re.compile(r"^Exception: ")  # MONAI StatsHandler.exception_raised


class ConsoleTracebackFilter(logging.Filter):
    """For console handlers: drops the engines' copies of the error that ends a run (``StatsHandler``'s
    ``Exception: ...`` with its traceback, ignite's "run is terminating due to exception" lines) and, unless
    ``show_file_only``, records marked ``file_only``; the reason is printed once at exit. Other records, warnings and
    errors with a traceback included, pass.

    Args:
        show_file_only: let records logged with ``extra={"file_only": True}`` through (the debug switch).
    """

    def __init__(self, show_file_only: bool = False) -> None:
        super().__init__()
        self.show_file_only = show_file_only

    def filter(self, record: logging.LogRecord) -> bool:
        """``False`` for a record the console should not show."""
        if getattr(record, "file_only", False) and not self.show_file_only:
            return False
        if record.exc_info and record.levelno >= logging.ERROR and _ENGINE_EXCEPTION.search(record.getMessage()):
            return False  # StatsHandler's copy of the error that ends the run
        return not (record.name.startswith("ignite.engine") and _TERMINATING.search(record.getMessage()))


def _is_console(handler: logging.Handler) -> bool:
    # exactly StreamHandler: file handlers and capture handlers of test runners (subclasses) keep everything
    return type(handler) is logging.StreamHandler


def _innermost_location(error: BaseException) -> str:
    innermost = list(error_chain(error))[-1]
    frames = traceback.extract_tb(innermost.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f" (raised at {frame.filename}:{frame.lineno}, in {frame.name})"


def refusal_text(error: BaseException) -> str:
    """What the console shows for an error that ends a run: the list of failed inputs for a batch, else one line.

    Errors of this package are shown as they are (their message names the file); any other error (a bug, or a
    library's error without a file name) is shown as ``Type: message`` with the place it was raised.

    Args:
        error: the error that reached the top of the process.
    """
    batch = next((link for link in error_chain(error) if isinstance(link, BatchFailedError)), None)
    if batch is not None:
        return str(batch)
    reason = describe_error(error)
    return reason if any(is_project_error(link) for link in error_chain(error)) else reason + _innermost_location(error)


class _RefusalHook:
    """``sys.excepthook`` of a bundle run; see the module docstring."""

    def __init__(self, output_dir: str | os.PathLike | None, debug: bool, previous: Callable) -> None:
        self.output_dir = output_dir
        self.debug = debug
        self.previous = previous

    def __call__(self, error_type: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        if issubclass(error_type, KeyboardInterrupt) and not self.debug:
            sys.stdout.flush()
            print(
                "monai_unet2: interrupted (Ctrl-C). Every output and checkpoint already written is complete (they are "
                "written atomically); --resume True goes on from there",
                file=sys.stderr,
            )
            return
        if not issubclass(error_type, Exception):
            self.previous(error_type, error, trace)
            return
        try:
            log_file = self._write_log(error)
        except Exception:  # the report must reach the console even if no log can be written
            log_file = None
        sys.stdout.flush()
        batch = next((link for link in error_chain(error) if isinstance(link, BatchFailedError)), None)
        if self.debug and batch is None:
            print(format_traceback(error), file=sys.stderr)
        if batch is not None:
            where = f"the tracebacks are in {log_file}" if log_file else "no log file could be written"
            print(f"monai_unet2: every other input was processed; {where}", file=sys.stderr)
        else:
            where = f"the full traceback is in {log_file}" if log_file else "no log file could be written"
            hint = "" if self.debug else "; rerun with --debug True to print it"
            print(f"monai_unet2: the run stopped; {where}{hint}", file=sys.stderr)
        print(refusal_text(error), file=sys.stderr)
        sys.stderr.flush()

    def _write_log(self, error: BaseException) -> Path | None:
        handlers = [
            h
            for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler) and os.path.abspath(h.baseFilename) != os.path.abspath(os.devnull)
        ]
        if handlers:
            details = (describe_error(error), format_traceback(error))
            record = logger.makeRecord(
                logger.name, logging.ERROR, __file__, 0, "the run stopped: %s\n%s", details, None
            )
            for handler in handlers:
                handler.handle(record)
            return Path(handlers[0].baseFilename)
        text = format_traceback(error)
        batch = next((link for link in error_chain(error) if isinstance(link, BatchFailedError)), None)
        if batch is not None:
            text = str(batch) + "\n\n" + "\n".join(f"{f.source}:\n{f.details}" for f in batch.failures) + "\n" + text
        name = f"error_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.log"
        folders = [Path(self.output_dir) / "logs"] if self.output_dir else []
        for folder in [*folders, Path(tempfile.gettempdir())]:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text(text, encoding="utf-8")
                return folder / name
            except OSError:
                continue
        return None


def report_refusals(output_dir: str | os.PathLike | None = None, debug: bool = False) -> None:
    """Make a failing run end with one line naming the file and the problem; see the module docstring.

    Use as an ``initialize`` step of a bundle config: ``"$monai_unet2.engines.report_refusals(@output_dir, @debug)"``.
    Calling it again replaces the settings (one hook, one filter per handler).

    Args:
        output_dir: the run's output folder: the log file goes to ``<output_dir>/logs/`` when the run has none.
        debug: also print the traceback on the console, once.
    """
    previous = sys.excepthook
    if isinstance(previous, _RefusalHook):
        previous = previous.previous
    sys.excepthook = _RefusalHook(output_dir, bool(debug), previous)
    get_logger(STATS_LOGGER)  # MONAI's own console logger of StatsHandler, made now so that it gets the filter too
    loggers = [logging.getLogger()] + [
        item for item in logging.root.manager.loggerDict.values() if isinstance(item, logging.Logger)
    ]
    for handler in {handler for item in loggers for handler in item.handlers if _is_console(handler)}:
        for existing in [f for f in handler.filters if isinstance(f, ConsoleTracebackFilter)]:
            handler.removeFilter(existing)
        handler.addFilter(ConsoleTracebackFilter(show_file_only=bool(debug)))
