"""How a run ends, in this process: the hook ``report_refusals`` installs, called as Python calls it, on the error
chains MONAI really builds; and the console filter on real log records."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose

from monai_unet2.console import configure
from monai_unet2.engines import BatchFailedError, CaseFailure, ConsoleTracebackFilter, report_refusals
from monai_unet2.transforms import SafeLoadImaged


@pytest.fixture
def hook():
    """``report_refusals``'s hook, undone afterwards (hook and console filters). A run log set up by an earlier test
    in this process (``monai_unet2.console.configure``) is closed first: these tests check where the log goes."""
    configure(None)
    previous = sys.excepthook
    handlers = [h for h in logging.getLogger().handlers]
    yield lambda output_dir, debug=False: report_refusals(output_dir, debug) or sys.excepthook
    sys.excepthook = previous
    for item in [logging.getLogger(), *logging.root.manager.loggerDict.values()]:
        for handler in getattr(item, "handlers", []):
            for found in [f for f in handler.filters if isinstance(f, ConsoleTracebackFilter)]:
                handler.removeFilter(found)
    assert handlers == logging.getLogger().handlers


def _monai_error(tmp_path: Path) -> tuple[BaseException, Path]:
    """The error a bundle run raises for a text file named ``.nii.gz``: MONAI's two wrappers around ours."""
    bad = tmp_path / "scan.nii.gz"
    bad.write_text("not an image")
    parser = ConfigParser({"run": "$@pipeline({'image': @path})", "path": str(bad)})
    parser["pipeline"] = Compose([SafeLoadImaged("image", reader="monai_unet2.data.DicomSeriesReader")])
    try:
        parser.get_parsed_content("run")
    except RuntimeError as error:
        return error, bad
    raise AssertionError("no error")


def test_the_last_line_is_the_reason_and_the_traceback_is_in_the_log(tmp_path, hook, capsys):
    error, bad = _monai_error(tmp_path)
    hook(tmp_path / "out")(type(error), error, error.__traceback__)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"{bad}: cannot read image (a text file (starting 'not an image'))"
    assert len(lines) == 2 and "Traceback" not in lines[0] and "--debug True" in lines[0]
    (log,) = (tmp_path / "out" / "logs").glob("error_*.log")
    assert str(log) in lines[0]
    text = log.read_text()
    assert "VolumeFileError" in text and "Failed to evaluate" in text and "Traceback (most recent call last)" in text


def test_an_error_no_check_named_shows_where_it_was_raised(tmp_path, hook, capsys):
    try:
        ConfigParser({"x": "$[1, 2][5]"}).get_parsed_content("x")
    except RuntimeError as error:
        hook(tmp_path)(type(error), error, error.__traceback__)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("IndexError: list index out of range (raised at ") and ", in <module>)" in last


def test_debug_prints_the_traceback_once_then_the_reason(tmp_path, hook, capsys):
    error, bad = _monai_error(tmp_path)
    hook(tmp_path, debug=True)(type(error), error, error.__traceback__)
    err = capsys.readouterr().err
    assert err.count("VolumeFileError: ") == 1 and err.count("RuntimeError: Failed to evaluate") == 1
    assert err.strip().splitlines()[-1] == f"{bad}: cannot read image (a text file (starting 'not an image'))"


def test_a_batch_ends_with_its_list_and_a_run_log_is_used_when_there_is_one(tmp_path, hook, capsys):
    """With a file handler on the root logger (as ``monai_unet2.console.configure`` adds), the traceback goes there."""
    run_log = tmp_path / "run.log"
    handler = logging.FileHandler(run_log)
    logging.getLogger().addHandler(handler)
    try:
        failures = [CaseFailure("/in/a.nii.gz", "/in/a.nii.gz: cannot read image (an empty file (0 bytes))", "tb-a")]
        try:
            raise RuntimeError("Failed to evaluate ConfigExpression") from BatchFailedError(failures, 3)
        except RuntimeError as error:
            hook(tmp_path)(type(error), error, error.__traceback__)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2:] == [
        "1 of 3 inputs failed (2 processed); each failed input and why:",
        "  /in/a.nii.gz: cannot read image (an empty file (0 bytes))",
    ]
    assert str(run_log) in lines[0] and "BatchFailedError" in run_log.read_text()
    assert not (tmp_path / "logs").exists()


def test_ctrl_c_says_what_is_kept_in_one_line(tmp_path, hook, capsys):
    hook(tmp_path)(KeyboardInterrupt, KeyboardInterrupt(), None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("monai_unet2: interrupted (Ctrl-C)") and "--resume True" in err[0]


def test_the_console_filter_drops_only_the_engines_copies_of_the_error():
    console = ConsoleTracebackFilter()

    def record(name: str, level: int, message: str, with_traceback: bool = False, **extra) -> logging.LogRecord:
        info = None
        if with_traceback:
            try:
                raise ValueError("x")
            except ValueError:
                info = sys.exc_info()
        made = logging.getLogger(name).makeRecord(name, level, __file__, 1, message, (), info)
        made.__dict__.update(extra)
        return made

    assert not console.filter(record("monai.handlers.StatsHandler", logging.ERROR, "Exception: x", True))
    assert not console.filter(
        record("ignite.engine.engine.BatchEvaluator", logging.ERROR, "Engine run is terminating due to exception: x")
    )
    assert not console.filter(record("monai_unet2.engines.evaluator", logging.ERROR, "traceback of", file_only=True))
    assert ConsoleTracebackFilter(show_file_only=True).filter(
        record("monai_unet2.engines.evaluator", logging.ERROR, "traceback of", file_only=True)
    )
    assert console.filter(record("monai_unet2.tracking", logging.WARNING, "MLflow switched off", True))
    assert console.filter(record("monai_unet2.engines.evaluator", logging.ERROR, "input failed, going on: x"))
