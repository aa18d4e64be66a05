"""Batches that survive a bad case: the bundles' own inference and evaluation configs, run in this process on copies
of the committed hippocampus cases with hostile ones among them; and a training cache that fails cleanly.

Every good case is written, each failed input is listed with its one-line reason, ``stop_on_error`` restores the
stop at the first error, and a bad case during caching ends the process with exit status 1, never 134."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose

from monai_unet2.data.output_checks import output_problem
from monai_unet2.engines import BatchFailedError, CaseFailedError, describe_error
from monai_unet2.transforms import SafeLoadImaged

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
SAMPLE = BUNDLE / "sample_data"
CASES = sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))


def _inputs(folder: Path, good: int = 3) -> dict[str, Path]:
    """``good`` committed cases plus two hostile ones: a text file and a truncated gzip, both named ``.nii.gz``."""
    folder.mkdir()
    for case in CASES[:good]:
        shutil.copy(case, folder / case.name)
    text, truncated = folder / "hippocampus_050.nii.gz", folder / "hippocampus_100.nii.gz"
    text.write_text("patient list, not an image\n")
    truncated.write_bytes(CASES[good].read_bytes()[:3000])
    return {"text": text, "truncated": truncated}


def _inference(tmp_path: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    parser.update({"bundle_root": str(BUNDLE), "output_dir": str(tmp_path / "out"), "progress_bar": False, **overrides})
    return parser


def test_the_reason_is_found_under_monais_wrappers(tmp_path):
    """``describe_error`` on the chain MONAI really builds: Compose's ``applying transform`` inside the config
    parser's ``Failed to evaluate``; without an error of this package, the innermost error as ``Type: message``."""
    bad = tmp_path / "scan.nii.gz"
    bad.write_text("not an image")
    parser = ConfigParser({"load": "$@pipeline({'image': @path})", "path": str(bad)})
    parser["pipeline"] = Compose([SafeLoadImaged("image", reader="monai_unet2.data.DicomSeriesReader")])
    with pytest.raises(RuntimeError, match="Failed to evaluate") as caught:
        parser.get_parsed_content("load")
    assert describe_error(caught.value) == f"{bad}: cannot read image (a text file (starting 'not an image'))"
    with pytest.raises(RuntimeError) as caught:
        ConfigParser({"x": "$1 / 0"}).get_parsed_content("x")
    assert describe_error(caught.value) == "ZeroDivisionError: division by zero"


def test_inference_writes_every_good_case_and_lists_each_failed_input(tmp_path):
    hostile = _inputs(tmp_path / "inputs")
    evaluator = _inference(tmp_path, dataset_dir=str(tmp_path / "inputs")).get_parsed_content("evaluator")
    with pytest.raises(BatchFailedError) as caught:
        evaluator.run()
    failures = caught.value.failures
    assert [f.source for f in failures] == [str(hostile["text"]), str(hostile["truncated"])]
    assert (
        failures[0].reason
        == f"{hostile['text']}: cannot read image (a text file (starting 'patient list, not an image'))"
    )
    assert failures[1].reason.startswith(f"{hostile['truncated']}: cannot read image (truncated or corrupt gzip data")
    assert "Traceback" in failures[1].details and "\n" not in failures[1].reason
    lines = str(caught.value).splitlines()
    assert lines[0] == "2 of 5 inputs failed (3 processed); each failed input and why:"
    assert lines[1:] == [f"  {failures[0].reason}", f"  {failures[1].reason}"]
    for case in CASES[:3]:
        output = tmp_path / "out" / case.name.replace(".nii.gz", "_seg.nii.gz")
        assert output_problem(output, case) is None
        assert set(np.unique(np.asarray(nib.load(output).dataobj))) == {0, 1, 2}
    assert evaluator.processed == 3


def test_stop_on_error_stops_at_the_first_bad_input_keeping_what_was_written(tmp_path):
    hostile = _inputs(tmp_path / "inputs")
    parser = _inference(tmp_path, dataset_dir=str(tmp_path / "inputs"), stop_on_error=True)
    with pytest.raises(CaseFailedError) as caught:
        parser.get_parsed_content("evaluator").run()
    assert (
        str(caught.value)
        == f"{hostile['text']}: cannot read image (a text file (starting 'patient list, not an image'))"
    )
    written = sorted(path.name for path in (tmp_path / "out").glob("*_seg.nii.gz"))
    assert written == ["hippocampus_004_seg.nii.gz", "hippocampus_038_seg.nii.gz"]  # the inputs sorted before it


def test_a_case_failing_after_inference_is_reported_and_the_next_one_runs(tmp_path):
    """Two inputs of one name from different folders, given as a hand-written datalist (no batch check): the second
    fails when it is written (the writer never replaces an output of this run), the third is still segmented."""
    first, second = tmp_path / "a" / "x.nii.gz", tmp_path / "b" / "x.nii.gz"
    for path, case in ((first, CASES[0]), (second, CASES[1])):
        path.parent.mkdir()
        shutil.copy(case, path)
    datalist = [{"image": str(first)}, {"image": str(second)}, {"image": str(CASES[2])}]
    evaluator = _inference(tmp_path, datalist=datalist).get_parsed_content("evaluator")
    before = None
    with pytest.raises(BatchFailedError) as caught:
        evaluator.run()
    (failure,) = caught.value.failures
    assert failure.source == str(second)
    assert failure.reason == (
        f"{second} and {first} would both be written to {tmp_path / 'out' / 'x_seg.nii.gz'}: refusing to replace an "
        "output of this run (rename one of the inputs)"
    )
    before = nib.load(tmp_path / "out" / "x_seg.nii.gz")
    assert before.shape == nib.load(first).shape  # the first input's output, untouched
    assert output_problem(tmp_path / "out" / CASES[2].name.replace(".nii.gz", "_seg.nii.gz"), CASES[2]) is None


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) for a real ENOSPC")
def test_a_full_disk_stops_the_batch_instead_of_failing_every_case(tmp_path):
    """Writing fails with ENOSPC (the kernel's, from /dev/full): every further input would fail the same way after its
    inference, so the batch stops at the first and says how many were not run."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for case in CASES[:3]:
        shutil.copy(case, folder / case.name)
    parser = _inference(tmp_path, dataset_dir=str(folder))
    full = "$lambda x: (open('/dev/full', 'w').write('x' * 65536), x)[1]"
    parser["postprocessing"]["transforms"].insert(0, {"_target_": "Lambdad", "keys": "pred", "func": full})
    with pytest.raises(BatchFailedError) as caught:
        parser.get_parsed_content("evaluator").run()
    (failure,) = caught.value.failures
    assert failure.reason == f"{folder / CASES[0].name}: OSError: [Errno 28] No space left on device"
    assert str(caught.value).splitlines()[0] == (
        "1 of 3 inputs failed (0 processed, 2 not run: the batch stopped at no space left on the device); "
        "each failed input and why:"
    )


def _dataset(folder: Path, cases: list[Path], shift_labels: set[int]) -> Path:
    """An MSD-style copy of ``cases``; the labels of the cases at ``shift_labels`` are moved 2 mm (another grid)."""
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for index, case in enumerate(cases):
        shutil.copy(case, folder / "imagesTr" / case.name)
        label = nib.load(SAMPLE / "labelsTr" / case.name)
        affine = label.affine.copy()
        affine[0, 3] += 2.0 if index in shift_labels else 0.0
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj), affine, label.header), folder / "labelsTr" / case.name)
    return folder


def _evaluation(tmp_path: Path, dataset: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")])
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(dataset),
            "output_dir": str(tmp_path / "evaluation"),
            "progress_bar": False,
        }
    )
    return parser


def test_evaluation_scores_the_good_cases_and_lists_the_label_on_another_grid(tmp_path):
    dataset = _dataset(tmp_path / "data", CASES[:3], shift_labels={1})
    with pytest.raises(BatchFailedError) as caught:
        _evaluation(tmp_path, dataset).get_parsed_content("validate#evaluator").run()
    (failure,) = caught.value.failures
    label, image = dataset / "labelsTr" / CASES[1].name, dataset / "imagesTr" / CASES[1].name
    assert failure.reason.startswith(f"{label} (label) and {image} (image) have different geometry")
    with open(tmp_path / "evaluation" / "dice_raw.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["filename"]).name for row in rows] == [CASES[0].name, CASES[2].name]
    assert all(float(row["mean"]) > 0.7 for row in rows)


def test_evaluation_where_every_case_fails_lists_them_all(tmp_path):
    dataset = _dataset(tmp_path / "data", CASES[:2], shift_labels={0, 1})
    with pytest.raises(BatchFailedError, match=r"^2 of 2 inputs failed \(0 processed\)"):
        _evaluation(tmp_path, dataset).get_parsed_content("validate#evaluator").run()
    assert not (tmp_path / "evaluation" / "dice_raw.csv").exists()


CACHE_SCRIPT = """
import sys, torch
from monai.transforms import Lambda
from monai_unet2.engines import SafeCacheDataset

def work(item):
    if item == 1:
        raise ValueError("case 1 is bad")
    x = torch.randn(256, 256)
    for _ in range(100):
        x = torch.tanh(x @ x)  # keeps a thread inside torch's C++ code when case 1 fails
    return x

SafeCacheDataset(data=list(range(6)), transform=Lambda(work), num_workers=int(sys.argv[1]), progress=False)
"""


@pytest.mark.integration
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_failing_case_while_caching_ends_the_process_cleanly(tmp_path, num_workers):
    """MONAI's ``CacheDataset`` fills its cache in a thread pool; when a case failed while the pool thread was inside
    torch, the process aborted (``terminate called without an active exception``, exit 134) on every run of this
    script (with ``CacheDataset``). ``SafeCacheDataset`` caches in the main thread (or joins its pool) first: exit 1 and the reason."""
    script = tmp_path / "cache.py"
    script.write_text(CACHE_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(script), str(num_workers)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "terminate called" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("ValueError: case 1 is bad")


def test_a_gzip_named_nii_is_listed_not_fatal(tmp_path):
    """A readable case next to one whose name contradicts its content: the batch goes on."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(CASES[0], folder / CASES[0].name)
    (folder / "compressed.nii").write_bytes(gzip.compress(gzip.decompress(CASES[1].read_bytes())))
    evaluator = _inference(tmp_path, dataset_dir=str(folder)).get_parsed_content("evaluator")
    with pytest.raises(BatchFailedError) as caught:
        evaluator.run()
    (failure,) = caught.value.failures
    assert "compressed.nii" in failure.reason and "rename it to end in .nii.gz" in failure.reason
    assert output_problem(tmp_path / "out" / CASES[0].name.replace(".nii.gz", "_seg.nii.gz"), CASES[0]) is None
