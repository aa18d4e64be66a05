"""What a run shows a person: progress, results and genuine warnings on the console; everything in a log file.

Every bundle run used to print lines nobody could act on: MONAI's nvImageCodec notices on CPU machines, a MONAI
deprecation of ``Orientationd``'s default, ignite's "Engine run resuming from iteration 0" on a fresh run, MLflow's
database migration notices, numpy's "Mean of empty slice" from metric summaries over cases where a metric is
undefined. Where the cause was ours it was fixed at the source ("Setting affine, but the applied meta contains an
affine" came from ``SignedDistanceMapd``; MLflow's type-hint advice from the served model's class; its artifact
progress bars are switched off by :func:`~monai_unet2.tracking.configure_http_client`). The rest comes from
third-party code and is listed in :data:`KNOWN_NOISE`, each entry narrow (the logger or the file that emits it, and
the message), with the reason.

:func:`configure` (the first ``initialize`` step of the bundles' configs) sets up the run's logging on top of the
bundle's ``configs/logging.conf`` (which MONAI applies first, and which may only name ``logging`` classes):

- Python warnings go through logging (``logging.captureWarnings``), so they reach the log file too;
- MLflow's own stderr handler is replaced by propagation to the root logger, for the same reason;
- the console handlers get a :class:`ConsoleFilter` that drops the known noise, and nothing else: errors always
  pass, so a refused input's reason stays the last thing a user sees;
- a file handler writes every record (known noise included) to ``<output_dir>/logs/<name>_<time>.log``, and the
  traceback of an exception that ends the run (the console keeps Python's own report of it).

Calling it again (MONAI Label trains in one long-lived process) replaces the file handler instead of adding one.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KNOWN_NOISE", "ConsoleFilter", "Noise", "configure", "current_log_file"]

WARNINGS_LOGGER = "py.warnings"
UNCAUGHT_LOGGER = "monai_unet2.uncaught"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class Noise:
    """A known third-party message that a person cannot act on.

    Args:
        logger: name (or name prefix, ending in ``.``) of the logger that emits it; ``py.warnings`` for Python
            warnings.
        message: regular expression searched in the message.
        source: for warnings, a fragment of the path of the file the warning is attributed to.
        reason: why it is noise, for the reader of this list.
    """

    logger: str
    message: str
    source: str = ""
    reason: str = ""

    def matches(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is this message."""
        name = record.name
        if not (name == self.logger or (self.logger.endswith(".") and name.startswith(self.logger))):
            return False
        text = record.getMessage()
        if self.source and self.source not in text.split(": ", 1)[0]:
            return False
        return re.search(self.message, text) is not None


KNOWN_NOISE: tuple[Noise, ...] = (
    Noise(
        WARNINGS_LOGGER,
        r"parsing config_file .*any `\"_target_\"` value in it is resolved",
        "monai/bundle/",
        "MONAI's notice that configs run code (GHSA-873f-pvrv-4x83), repeated for every run of the project's own "
        "configs; docs/security.md says what it means",
    ),
    Noise(
        "monai.bundle.workflows",
        r"^Setting logging properties based on config: ",
        reason="MONAI saying it applied the bundle's logging.conf",
    ),
    Noise(
        "monai.data.nvimgcodec_pydicom_plugin",
        r"nvImageCodec is not available",
        reason="MONAI's GPU JPEG decoder plugin, absent on CPU machines; pydicom decodes instead",
    ),
    Noise(
        WARNINGS_LOGGER,
        r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",
        "monai/data/image_reader.py",
        "the same, repeated when MONAI's default readers are constructed",
    ),
    Noise(
        WARNINGS_LOGGER,
        r"Orientationd\.__init__:labels: Current default value",
        "monai/utils/deprecate_utils.py",
        "MONAI 1.6 announces a new default for Orientationd(labels); RAS data reads the same under both",
    ),
    Noise(
        WARNINGS_LOGGER,
        r"get_mask_edges:always_return_as_numpy",
        "monai/utils/deprecate_utils.py",
        "MONAI's HausdorffDistance calling its own deprecated argument",
    ),
    Noise(
        "ignite.engine.engine.",
        r"^Engine run resuming from iteration 0, ",
        reason="ignite's wording for every fresh start of a MONAI engine (an evaluator starts each validation at "
        "iteration 0 of the trainer's epoch); a real resume of training (iteration > 0) stays",
    ),
    Noise(
        "ignite.engine.engine.SupervisedEvaluator",
        r"^Engine run finished\. Time taken",
        reason="an evaluator runs one epoch: its 'Epoch[n] Complete. Time taken' line, just before, gives the time",
    ),
    Noise(
        "mlflow.store.db.utils",
        r"^(Creating initial MLflow database tables|Updating database tables)",
        reason="MLflow creating or migrating its SQLite store",
    ),
    Noise("alembic.runtime.migration", r"^(Context impl |Will assume )", reason="MLflow's schema migration tool"),
    Noise(
        "highdicom.base",
        r"^copy (attributes of module|\w+-related attributes from dataset)",
        reason="highdicom narrating which source modules a DICOM SEG copies (nine lines per SEG)",
    ),
    Noise(
        "mlflow.pyfunc",
        r"^Validating input example against model signature",
        reason="MLflow checking the input example of a version being registered",
    ),
    Noise(
        WARNINGS_LOGGER,
        r"RuntimeWarning: (Mean of empty slice|All-NaN slice encountered|Degrees of freedom <= 0)",
        "monai/handlers/utils.py",
        "MetricsSaver summarising a metric column that is NaN for some cases (e.g. HD95 of an empty prediction); "
        "the per-case CSV holds the NaNs and the 'notnans' summary counts them",
    ),
)

_BEST_METRIC = re.compile(r"^Got new best metric of ")
_state: dict[str, Any] = {"file_handler": None, "log_file": None, "excepthook": None}


class ConsoleFilter(logging.Filter):
    """Drops :data:`KNOWN_NOISE` from a console handler; records at ERROR or above always pass.

    It also drops MONAI's "Got new best metric of ..." in a standalone evaluation (an evaluator running without a
    trainer in the process), where the first value is trivially the best; in training the line stays.

    Args:
        noise: the messages to drop.
    """

    def __init__(self, noise: Iterable[Noise] = KNOWN_NOISE) -> None:
        super().__init__()
        self.noise = tuple(noise)
        self.trainer_seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        """``False`` for a record the console should not show."""
        if record.levelno >= logging.ERROR:
            return True
        if record.name.endswith(".SupervisedTrainer"):
            self.trainer_seen = True
        if (
            not self.trainer_seen
            and record.name.endswith(".SupervisedEvaluator")
            and _BEST_METRIC.search(record.getMessage())
        ):
            return False
        return not any(noise.matches(record) for noise in self.noise)


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _route_mlflow_to_root() -> None:
    """MLflow logs through its own stderr handler and does not propagate: send its records to the root handlers."""
    mlflow_logger = logging.getLogger("mlflow")
    for handler in list(mlflow_logger.handlers):
        if _is_console(handler):
            mlflow_logger.removeHandler(handler)
    mlflow_logger.propagate = True


def _loggers_sharing(handlers: Iterable[logging.Handler]) -> list[logging.Logger]:
    """Loggers that do not propagate but write to one of ``handlers``: MONAI's ``get_logger`` sets
    ``propagate = False``, and the bundles' logging.conf gives such loggers (``monai.handlers.StatsHandler``) the
    root's console handler, so their records need the file handler added beside it."""
    wanted = set(handlers)
    return [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate and wanted & set(logger.handlers)
    ]


def _log_uncaught_exceptions() -> None:
    """Write the traceback of an exception that ends the process to the log file too (once per process).

    The console keeps Python's own report (the hook calls the previous one), so whatever shortens that report for
    a person can rely on the complete traceback being in the file.
    """
    if _state.get("excepthook") is not None:
        return
    previous = sys.excepthook
    uncaught = logging.getLogger(UNCAUGHT_LOGGER)
    uncaught.propagate = False

    def hook(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
        if uncaught.handlers:
            uncaught.error("the run ended with an exception", exc_info=(kind, value, traceback))
        previous(kind, value, traceback)

    sys.excepthook = hook
    _state["excepthook"] = hook


def configure(output_dir: str | os.PathLike | None = None, name: str = "run") -> Path | None:
    """Set up a run's console and log file (see the module docstring); returns the log file.

    Use as the first ``initialize`` step of a bundle config: ``"$monai_unet2.console.configure(@output_dir)"``.

    Args:
        output_dir: the run's output folder; the log goes to ``<output_dir>/logs/``. ``None``, or a folder that
            cannot be written: no log file.
        name: the log file's name prefix.
    """
    logging.captureWarnings(True)
    _route_mlflow_to_root()
    root = logging.getLogger()
    if not any(_is_console(handler) for handler in root.handlers):
        console = logging.StreamHandler()
        console.setLevel(logging.INFO)
        root.addHandler(console)
    for handler in root.handlers:
        if _is_console(handler) and not any(isinstance(f, ConsoleFilter) for f in handler.filters):
            handler.addFilter(ConsoleFilter())
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    previous = _state["file_handler"]
    if isinstance(previous, logging.Handler):
        for logger in [root, *_loggers_sharing([previous])]:
            logger.removeHandler(previous)
        logging.getLogger(UNCAUGHT_LOGGER).handlers[:] = []
        previous.close()
        _state["file_handler"] = _state["log_file"] = None
    if output_dir is None:
        return None
    log_file = Path(output_dir) / "logs" / f"{name}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.log"
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
    except OSError as error:  # the run's own output check names an unwritable folder; no second message here
        logging.getLogger(__name__).debug(f"no log file in {log_file.parent}: {error}")
        return None
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    for logger in _loggers_sharing(root.handlers):
        logger.addHandler(file_handler)
    root.addHandler(file_handler)
    logging.getLogger(UNCAUGHT_LOGGER).handlers[:] = [file_handler]
    _state["file_handler"], _state["log_file"] = file_handler, log_file
    _log_uncaught_exceptions()
    logging.getLogger(__name__).info(f"complete log: {log_file}")
    return log_file


def current_log_file() -> Path | None:
    """The log file of the last :func:`configure` call, or ``None``."""
    log_file = _state["log_file"]
    return log_file if isinstance(log_file, Path) else None
