"""What a run prints: the known third-party noise stays off the console and in the log file, genuine warnings and
errors reach both. Where it is cheap, the real code emits the message (MONAI's Orientationd, numpy, MLflow creating a
SQLite store); ignite's and MONAI's engine lines are logged through the loggers that emit them."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import pytest
from monai.handlers import StatsHandler

from monai_unet2 import console
from monai_unet2.console import ConsoleFilter, configure


@pytest.fixture
def clean_logging():
    """Root handlers, warning capture and MLflow's logger as they were, whatever configure() changed."""
    root, mlflow_logger = logging.getLogger(), logging.getLogger("mlflow")
    saved = (list(root.handlers), root.level, list(mlflow_logger.handlers), mlflow_logger.propagate)
    yield
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    for handler in saved[0]:
        if handler not in root.handlers:
            root.addHandler(handler)
        for added in [f for f in handler.filters if isinstance(f, ConsoleFilter)]:
            handler.removeFilter(added)
    root.setLevel(saved[1])
    mlflow_logger.handlers[:] = saved[2]
    mlflow_logger.propagate = saved[3]
    logging.captureWarnings(False)
    console._state.update(file_handler=None, log_file=None)  # the excepthook stays: it writes nowhere without one


def _console_handler() -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    return handler, stream


def test_noise_goes_to_the_file_only_and_genuine_messages_to_both(tmp_path, clean_logging):
    _, shown = _console_handler()
    log_file = configure(tmp_path / "out")
    assert log_file.parent == tmp_path / "out" / "logs"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        from monai.transforms import Orientationd

        Orientationd("image", axcodes="RAS")  # MONAI's FutureWarning about its `labels` default
        np.nanmean(np.full(3, np.nan))  # numpy, from this file: not on the known list, so it is shown
        import mlflow

        mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # creates the store
        logging.getLogger("ignite.engine.engine.SupervisedEvaluator").info(
            "Engine run resuming from iteration 0, epoch 3 until 4 epochs"
        )
        logging.getLogger("ignite.engine.engine.SupervisedTrainer").info(
            "Engine run resuming from iteration 120, epoch 4 until 10 epochs"  # a real resume
        )
        logging.getLogger("ignite.engine.engine.SupervisedEvaluator").info("Engine run finished. Time taken: 00:00:03")
        logging.getLogger("ignite.engine.engine.SupervisedTrainer").info("Engine run finished. Time taken: 00:00:23")
        logging.getLogger("monai_unet2.data.dicom_seg").warning("DICOM SEG: no code for 'lesion'")
        logging.getLogger("monai_unet2.transforms").error("x.nii.gz: DICOM Modality CT, refusing")
    for handler in logging.getLogger().handlers:
        handler.flush()
    console_text, file_text = shown.getvalue(), log_file.read_text()
    for noise in ("Orientationd.__init__:labels", "Creating initial MLflow", "iteration 0, epoch 3", "00:00:03"):
        assert noise not in console_text and noise in file_text, noise
    for genuine in ("Mean of empty slice", "iteration 120", "00:00:23", "no code for 'lesion'", "refusing"):
        assert genuine in console_text and genuine in file_text, genuine
    assert console_text.rstrip().splitlines()[-1] == "x.nii.gz: DICOM Modality CT, refusing"


def test_best_metric_line_only_in_training_and_stats_reach_the_file(tmp_path, clean_logging):
    handler, shown = _console_handler()
    stats_logger = logging.getLogger("monai.handlers.StatsHandler")  # as the bundles' logging.conf sets it up
    stats_logger.handlers[:], stats_logger.propagate = [handler], False
    try:
        log_file = configure(tmp_path)
        evaluator = logging.getLogger("ignite.engine.engine.SupervisedEvaluator")
        evaluator.info("Got new best metric of dice: 0.87")  # a standalone evaluation: trivially the best
        StatsHandler(iteration_log=False)  # MONAI's own get_logger: keeps the handlers logging.conf gave it
        stats_logger.info("Epoch[1] Metrics -- dice: 0.8700")
        logging.getLogger("ignite.engine.engine.SupervisedTrainer").info("Epoch[1] Complete.")
        evaluator.info("Got new best metric of val_mean_dice: 0.55")  # in training it is news
        second = configure(tmp_path / "second")  # MONAI Label trains again in the same process
        stats_logger.info("Epoch[2] Metrics -- dice: 0.9000")
        file_handlers = [
            h for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler) and h.baseFilename.startswith(str(tmp_path))
        ]  # fmt: skip
        assert len(file_handlers) == 1 and [h for h in stats_logger.handlers if h is not handler] == file_handlers
        for file_handler in file_handlers:
            file_handler.flush()
        assert "Epoch[2]" in second.read_text() and "Epoch[2]" not in log_file.read_text()
    finally:
        stats_logger.handlers[:], stats_logger.propagate = [], True
    text = shown.getvalue()
    assert (
        "best metric of dice" not in text
        and "best metric of val_mean_dice: 0.55" in text
        and "Epoch[1] Metrics -- dice" in text
    )
    assert (
        "Epoch[1] Metrics -- dice: 0.8700" in log_file.read_text()
        and "best metric of dice: 0.87" in log_file.read_text()
    )


def test_errors_always_pass_the_filter():
    record = logging.LogRecord("mlflow.store.db.utils", logging.ERROR, "x", 1, "Creating initial MLflow", None, None)
    assert ConsoleFilter().filter(record)
