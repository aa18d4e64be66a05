"""The hostile-input catalogue's run cases: batches (inference and evaluation over folders), resumed runs, output
names, links, weights and training runs, each built from committed data by the builders below and run through the
bundles' own configs.

Pipelines (keys of ``RUN_PIPELINES``, merged into ``hostile_inputs.PIPELINES``):

- ``batch`` / ``drive-batch`` / ``evaluate-batch``: the hippocampus or DRIVE ``inference.json`` (or hippocampus
  ``train.json`` + ``evaluate.json``) run in this process with MONAI's ``ConfigWorkflow`` (``initialize`` included),
  with the overrides the case's entry holds. A run that ends with the list of failed inputs
  (``BatchFailedError``) returns it for the case's check; a run that stops raises what the console's last line
  would say (``refusal_text``), so that the runner can judge whether it names the input;
- ``train-cli``: ``python -m monai.bundle run`` of the hippocampus ``train.json`` for one epoch in a subprocess,
  because an abort (exit 134, ``terminate called without an active exception``) only shows in a process of its own:
  a non-zero exit raises the last line of its output, an exit other than 0 or 1 raises a two-line error (crashed).

An entry is a dict: ``_overrides`` (config ids), plus the paths a good message must name (any one of them).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from hostile_builders import CASE_NIFTI, CT3, build_dicom, build_png, copy_case
from hostile_cases import Case

ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
DRIVE = ROOT / "bundles" / "drive_vessel_u2net_segmentation"
SAMPLE = HIPPOCAMPUS / "sample_data"
SAMPLES = sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))


class RunResult(dict):
    """What a batch left: ``failures`` (input -> reason), ``out`` (the output folder), ``outputs`` (its files)."""


def _workflow(
    bundle: Path, configs: list[str], overrides: dict[str, Any], folder: Path, first_postprocessing: dict | None = None
) -> RunResult:
    from monai.bundle import ConfigWorkflow

    from monai_unet2.engines import BatchFailedError, refusal_text

    settings = {"bundle_root": str(bundle), "progress_bar": False, "output_dir": str(folder / "out"), **overrides}
    logging.disable(logging.WARNING)  # MONAI's notes on the workflow's construction (no logging file, no type)
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / name) for name in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        **settings,
    )
    if first_postprocessing is not None:
        workflow.parser["postprocessing"]["transforms"].insert(0, first_postprocessing)
    out = Path(settings["output_dir"])
    result = RunResult(failures={}, out=out)
    previous_hook = sys.excepthook
    logging.disable(logging.INFO)  # the engines' progress lines; warnings reach the case's log
    try:
        workflow.initialize()
        workflow.run()
    except Exception as error:
        batch = next((e for e in (error, error.__cause__) if isinstance(e, BatchFailedError)), None)
        if batch is None:
            raise RuntimeError(refusal_text(error)) from None
        result["failures"] = {failure.source: failure.reason for failure in batch.failures}
        result["summary"] = str(batch)
    finally:
        sys.excepthook = previous_hook  # report_refusals installs the process's hook; this process is the catalogue
        logging.disable(logging.NOTSET)
    result["outputs"] = sorted(p.name for p in out.iterdir() if p.is_file()) if out.is_dir() else []
    return result


def _train_cli(entry: dict, folder: Path) -> str:
    argv = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(HIPPOCAMPUS / "configs" / "train.json")]
    argv += ["--bundle_root", str(HIPPOCAMPUS), "--progress_bar", "False", "--max_epochs", "1"]
    argv += ["--output_dir", str(folder / "eval"), "--ckpt_dir", str(folder / "models")]
    for key, value in entry["_overrides"].items():
        argv += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}")
    result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    if result.returncode not in (0, 1) or "terminate called" in output:
        raise RuntimeError(f"exit {result.returncode}\n{last}")
    if result.returncode:
        raise RuntimeError(last)
    return output


RUN_PIPELINES: dict[str, Callable[[Any, Path], Any]] = {
    "batch": lambda entry, folder: _workflow(
        HIPPOCAMPUS, ["inference.json"], entry["_overrides"], folder, entry.get("_postprocessing_first")
    ),
    "drive-batch": lambda entry, folder: _workflow(DRIVE, ["inference.json"], entry["_overrides"], folder),
    "evaluate-batch": lambda entry, folder: _workflow(
        HIPPOCAMPUS, ["train.json", "evaluate.json"], entry["_overrides"], folder
    ),
    "train-cli": _train_cli,
}


# ------------------------------------------------------------------------------------------------------- builders


def _inputs(folder: Path, count: int = 12) -> Path:
    inputs = folder / "in"
    inputs.mkdir(exist_ok=True)
    for case in SAMPLES[:count]:
        shutil.copy(case, inputs / case.name)
    return inputs


def _batch(folder: Path, count: int = 12, **overrides: Any) -> dict:
    inputs = _inputs(folder, count)
    return {"_overrides": {"dataset_dir": str(inputs), **overrides}, "dataset_dir": str(inputs)}


def _one_bad(folder: Path, **overrides: Any) -> dict:
    entry = _batch(folder, **overrides)
    bad = Path(entry["dataset_dir"]) / "hippocampus_100.nii.gz"
    bad.write_text("patient list, not an image\n")
    return {**entry, "bad": str(bad)}


def _all_bad(folder: Path) -> dict:
    entry = _batch(folder, count=0)
    for name in ("a.nii.gz", "b.nii.gz"):
        (Path(entry["dataset_dir"]) / name).write_text("not an image\n")
    return entry


def _resume(folder: Path) -> dict:
    entry = _batch(folder, count=4, resume=True)
    out = folder / "out"
    out.mkdir()
    for case in SAMPLES[:4]:
        image = nib.load(case)
        label = (np.asarray(image.dataobj) > 60).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, image.affine), out / case.name.replace(".nii.gz", "_seg.nii.gz"))
    (out / SAMPLES[1].name.replace(".nii.gz", "_seg.nii.gz")).write_bytes(b"")
    truncated = out / SAMPLES[2].name.replace(".nii.gz", "_seg.nii.gz")
    truncated.write_bytes(truncated.read_bytes()[:200])
    return entry


def _collision(folder: Path, second: str) -> dict:
    entry = _batch(folder, count=0)
    inputs = Path(entry["dataset_dir"])
    first = copy_case(inputs, "x.nii.gz")
    if second == "x.nii":
        other = inputs / "x.nii"
        other.write_bytes(nib.load(first).to_bytes())
    elif second == "link":
        (inputs / "y.nii.gz").symlink_to(first)
        other = inputs / "y.nii.gz"
    else:
        other = build_dicom(inputs, CT3) if second == "dicom" else None
        other = other.rename(inputs / "x")
    return {**entry, "x": str(first), "other": str(other)}


def _blocked(folder: Path) -> dict:
    (folder / "blocker").write_text("")
    out = folder / "blocker" / "out"
    return {**_batch(folder, count=2, output_dir=str(out)), "out": str(out)}


def _replacing(folder: Path) -> dict:
    entry = _batch(folder, count=2, output_postfix="")
    entry["_overrides"]["output_dir"] = entry["dataset_dir"]
    return entry


def _full_disk(folder: Path) -> dict:
    """Every write fails with the kernel's ENOSPC (a transform writing to /dev/full first), as on a full disk."""
    full = {
        "_target_": "Lambdad",
        "keys": "pred",
        "func": "$lambda x: (open('/dev/full', 'w').write('x' * 65536), x)[1]",
    }
    return {**_batch(folder, count=4), "_postprocessing_first": full}


def _same_folder(folder: Path) -> dict:
    entry = _batch(folder, count=2)
    entry["_overrides"]["output_dir"] = entry["dataset_dir"]
    return entry


def _png_collision(folder: Path) -> dict:
    inputs = folder / "in"
    inputs.mkdir()
    first = build_png(inputs, "a.png")
    second = build_png(inputs, "a.tif")
    return {"_overrides": {"dataset_dir": str(inputs)}, "a": str(first), "b": str(second)}


def _link_out(folder: Path, target: str) -> dict:
    entry = _batch(folder, count=2)
    inputs = Path(entry["dataset_dir"])
    if target == "slice":
        series = build_dicom(inputs, CT3)
        first = sorted(series.iterdir())[0]
        first.unlink()
        first.symlink_to(CT3 / first.name)
        return {**entry, "link": str(first)}
    (inputs / "evil.nii.gz").symlink_to(target)
    return {**entry, "link": str(inputs / "evil.nii.gz")}


def _not_inputs(folder: Path) -> dict:
    entry = _batch(folder, count=2)
    inputs = Path(entry["dataset_dir"])
    (inputs / "notes.txt").write_text("scanned twice\n")
    (inputs / "empty_series").mkdir()
    build_png(inputs, "photo.png")
    return entry


def _weights(folder: Path, kind: str) -> dict:
    import torch

    entry = _batch(folder, count=2)
    weights = folder / "model.pt"
    if kind == "crafted":
        state = torch.load(HIPPOCAMPUS / "models" / "model.pt", weights_only=True)
        state["payload"] = _Payload(folder / "marker")
        torch.save(state, weights)
    elif kind == "other":
        torch.save(torch.nn.Conv2d(1, 1, 3).state_dict(), weights)
    else:
        weights.write_bytes((HIPPOCAMPUS / "models" / "model.pt").read_bytes()[:100_000])
    entry["_overrides"]["ckpt_path"] = str(weights)
    return {**entry, "weights": str(weights)}


class _Payload:
    """Unpickling it would write a marker file: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > '{self.marker}'",)


def _training(folder: Path, label: str) -> dict:
    data = folder / "data"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
    for case in SAMPLES[: 1 if label == "single" else 5]:
        shutil.copy(case, data / "imagesTr" / case.name)
        shutil.copy(SAMPLE / "labelsTr" / case.name, data / "labelsTr" / case.name)
    target = data / "labelsTr" / SAMPLES[0].name
    source = nib.load(target)
    array, affine = np.asarray(source.dataobj), source.affine.copy()
    if label == "grid":
        affine[0, 3] += 2.0
    elif label == "float":
        array = array.astype(np.float32) * 0.5
    elif label == "image":
        array = np.asarray(nib.load(CASE_NIFTI).dataobj)
    if label != "single":
        nib.save(nib.Nifti1Image(array, affine), target)
    return {"_overrides": {"dataset_dir": str(data)}, "label": str(target)}


def _evaluation(folder: Path) -> dict:
    entry = _training(folder, "grid")
    return {**entry, "_overrides": {**entry["_overrides"], "split": "all"}}


# --------------------------------------------------------------------------------------------------------- checks


def _batch_check(bad_count: int, written: int) -> Callable[[Any, str, Callable], str | None]:
    def check(result: RunResult, log: str, rerun: Callable) -> str | None:
        outputs = [name for name in result["outputs"] if name.endswith((".nii.gz", ".png", ".csv"))]
        if len(result["failures"]) != bad_count:
            return f"{len(result['failures'])} inputs listed as failed, expected {bad_count}"
        if any("\n" in reason for reason in result["failures"].values()):
            return "a reason spans several lines"
        return None if len(outputs) == written else f"{len(outputs)} outputs, expected {written}"

    return check


def _resumed(result: RunResult, log: str, rerun: Callable) -> str | None:
    """Nothing failed, and the 0-byte and truncated outputs were redone into finished ones."""
    from monai_unet2.data.output_checks import output_problem

    if result["failures"]:
        return f"failures {result['failures']}"
    for case in SAMPLES[:4]:
        problem = output_problem(result["out"] / case.name.replace(".nii.gz", "_seg.nii.gz"), case)
        if problem:
            return f"{case.name}: {problem}"
    return None


def _evaluated(result: RunResult, log: str, rerun: Callable) -> str | None:
    """The label on another grid is listed, the 4 good cases are scored."""
    import csv

    if len(result["failures"]) != 1:
        return f"{len(result['failures'])} inputs listed as failed, expected 1"
    with open(result["out"] / "dice_raw.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return None if len(rows) == 4 else f"{len(rows)} cases scored, expected 4"


def _skipped_named(result: RunResult, log: str, rerun: Callable) -> str | None:
    wanted = ("notes.txt: skipped", "empty_series: skipped", "photo.png: skipped")
    missing = [text for text in wanted if text not in log]
    return f"not named as skipped: {missing}" if missing else None


RUN_CASES: list[Case] = [
    Case("batch: 13 inputs, one a text file", "processed", _one_bad, "batch", _batch_check(1, 12)),
    Case("batch: 13 inputs, one bad, --stop_on_error", "refused", lambda d: _one_bad(d, stop_on_error=True), "batch"),
    Case("batch: every input bad", "processed", _all_bad, "batch", _batch_check(2, 0)),
    Case("batch: --resume over a 0-byte and a truncated output", "processed", _resume, "batch", _resumed),
    Case("batch: output folder behind a file", "refused", _blocked, "batch"),
    Case("batch: x.nii + x.nii.gz", "refused", lambda d: _collision(d, "x.nii"), "batch"),
    Case("batch: DICOM folder x + x.nii.gz", "refused", lambda d: _collision(d, "dicom"), "batch"),
    Case("batch: two links to one file", "refused", lambda d: _collision(d, "link"), "batch"),
    Case("batch: a.png + a.tif (DRIVE)", "refused", _png_collision, "drive-batch"),
    Case(
        "batch: link to /etc/hostname in the input folder", "refused", lambda d: _link_out(d, "/etc/hostname"), "batch"
    ),
    Case("batch: a series slice linked from elsewhere", "refused", lambda d: _link_out(d, "slice"), "batch"),
    Case("batch: outputs over the inputs (input folder, --output_postfix '')", "refused", _replacing, "batch"),
    Case("batch: files that are no input are named", "processed", _not_inputs, "batch", _skipped_named),
    Case("batch: output folder = input folder", "refused", _same_folder, "batch"),
    Case(
        "batch: disk full while writing (stops, does not fail all)",
        "processed",
        _full_disk,
        "batch",
        lambda result, log, rerun: (
            None
            if len(result["failures"]) == 1
            and "3 not run: the batch stopped at no space left" in result.get("summary", "")
            else f"{len(result['failures'])} failures: {result.get('summary', '')[:200]}"
        ),
        skip=None if Path("/dev/full").exists() else "needs /dev/full",
    ),
    Case(
        "batch: missing --dataset_dir",
        "refused",
        lambda d: {"_overrides": {"dataset_dir": str(d / "nowhere")}, "dir": str(d / "nowhere")},
        "batch",
    ),
    Case(
        "evaluation: a label on another grid among good cases", "processed", _evaluation, "evaluate-batch", _evaluated
    ),
    Case("weights: crafted pickle checkpoint", "refused", lambda d: _weights(d, "crafted"), "batch"),
    Case("weights: another network's checkpoint", "refused", lambda d: _weights(d, "other"), "batch"),
    Case("weights: truncated checkpoint", "refused", lambda d: _weights(d, "truncated"), "batch"),
    Case("training: label on another grid (was exit 134)", "refused", lambda d: _training(d, "grid"), "train-cli"),
    Case("training: float label values", "refused", lambda d: _training(d, "float"), "train-cli"),
    Case("training: image given as label", "refused", lambda d: _training(d, "image"), "train-cli"),
    Case(
        "training: a single case",
        "processed",
        lambda d: _training(d, "single"),
        "train-cli",
        skip="the every-5th split puts the only case in validation: issue #16 (monai_unet2/data/datalist.py)",
    ),
]
