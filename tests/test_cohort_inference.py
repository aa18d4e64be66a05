"""Cohort inference and evaluation over ranks: ``configs/multi_gpu_inference.json`` and ``multi_gpu_evaluate.json``
merged over the single-process configs, run by torchrun with two Gloo processes on this CPU machine.

Each run is compared with a single-process run of the same config on the same inputs: the outputs must be the same
voxels, the evaluation report the same cases with the same values, in the same order.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_runner import DRIVE_ONE_PASS, run_bundle, string_leaves
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver

from monai_unet2.distributed import from_rank_zero, gather_objects
from monai_unet2.planning.bundle_writer import TEMPLATE_FILES, TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
DRIVE_BUNDLE = ROOT / "bundles" / "drive_vessel_u2net_segmentation"
BUNDLES = (HIPPOCAMPUS, DRIVE_BUNDLE)
DRIVE = Path(os.environ.get("DRIVE_DIR", ROOT.parent / "shared" / "data" / "drive" / "training"))
CASES = ("004", "038", "065", "105", "138")
OVERLAYS = {"multi_gpu_inference.json": ["inference.json"], "multi_gpu_evaluate.json": ["train.json", "evaluate.json"]}
REPORT = ("dice_raw.csv", "hd95_raw.csv", "dice_summary.csv", "hd95_summary.csv", "summary.json")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_overlay_merges_onto_the_single_process_configs(bundle, overlay):
    """Every id the overlay refers to exists in the configs it is merged over; the data loader gets a sampler that
    keeps every case once, the process group joins after the single-process initialisation and leaves at the end."""
    configs = bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in [*OVERLAYS[overlay], overlay]])
    text = json.loads((configs / overlay).read_text())
    referenced = {
        ref.replace("::", "#") for leaf in string_leaves(text) for ref in ReferenceResolver.match_refs_pattern(leaf)
    }
    missing = sorted(ref for ref in referenced if ref not in parser)
    assert not missing, f"{overlay} refers to ids missing from {OVERLAYS[overlay]}: {missing}"
    section = "validate#" if "evaluate" in overlay else ""
    assert parser[f"{section}dataloader#sampler"] == f"@{section}sampler"
    assert parser[f"{section}sampler#even_divisible"] is False and parser[f"{section}sampler#shuffle"] is False
    single = ConfigParser()
    single.read_config([str(configs / name) for name in OVERLAYS[overlay]])
    assert parser["initialize"][: len(single["initialize"])] == single["initialize"]
    assert parser["initialize"][-2:] == [
        "$monai_unet2.distributed.init_process_group(@device, @process_group_timeout_s)",
        "$monai_unet2.distributed.quiet_other_ranks()",
    ]
    assert parser["finalize"] == ["$monai_unet2.distributed.destroy_process_group()"]


def test_planned_bundles_get_the_cohort_overlays():
    for name in OVERLAYS:
        assert name in TEMPLATE_FILES
        assert (TEMPLATES / name).read_text() == (HIPPOCAMPUS / "configs" / name).read_text()


def test_outside_a_process_group_rank_zero_work_is_a_plain_call():
    assert from_rank_zero(sorted, [3, 1, 2]) == [1, 2, 3]
    assert gather_objects({"rows": 2}) == [{"rows": 2}]
    with pytest.raises(ZeroDivisionError):
        from_rank_zero(lambda: 1 / 0)


def torchrun_bundle(bundle: Path, configs: list[str], cwd: Path, *args: str, timeout: float = 240) -> tuple[int, str]:
    """``torchrun --nproc_per_node 2 -m monai.bundle run`` with ``configs`` merged, in its own process group (killed
    with its workers on timeout); returns the exit status and the output."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    config_files = repr([str(bundle / "configs" / name) for name in configs])
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle"]
    argv += ["run", "--config_file", config_files, "--bundle_root", str(bundle)]
    argv += ["--meta_file", str(bundle / "configs" / "metadata.json"), "--progress_bar", "False", *args]
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s (a rank waiting in a collective?):\n{output[-6000:]}")
    return process.returncode, output


def hippocampus_cases(folder: Path, labels: bool = True) -> Path:
    """Five committed sample volumes (and their labels) in ``folder/imagesTr`` (``folder/labelsTr``)."""
    sample = HIPPOCAMPUS / "sample_data"
    for kind in ("imagesTr", "labelsTr") if labels else ("imagesTr",):
        (folder / kind).mkdir(parents=True)
        for case in CASES:
            shutil.copy(sample / kind / f"hippocampus_{case}.nii.gz", folder / kind)
    return folder


def voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.mark.integration
@pytest.mark.slow
def test_two_ranks_segment_like_one_process_and_resume_runs_only_the_rest(tmp_path):
    data = hippocampus_cases(tmp_path / "data", labels=False)
    run_bundle(HIPPOCAMPUS, "run", tmp_path, "--dataset_dir", str(data), "--output_dir", str(tmp_path / "single"),
               "--progress_bar", "False", config="inference.json")  # fmt: skip
    status, output = torchrun_bundle(
        HIPPOCAMPUS, ["inference.json", "multi_gpu_inference.json"], tmp_path,
        "--dataset_dir", str(data), "--output_dir", str(tmp_path / "ranks"),
    )  # fmt: skip
    assert status == 0, output[-6000:]
    names = [f"hippocampus_{case}_seg.nii.gz" for case in CASES]
    assert sorted(path.name for path in (tmp_path / "ranks").glob("*.nii.gz")) == names
    for name in names:
        single, ranks = voxels(tmp_path / "single" / name), voxels(tmp_path / "ranks" / name)
        assert single.shape == ranks.shape and (single > 0).sum() > 1000
        np.testing.assert_array_equal(ranks, single, err_msg=name)

    # resume: two outputs are finished, one input is broken; 2 + 1 of the 4 pending cases are shared by the ranks
    broken = data / "imagesTr" / "hippocampus_050.nii.gz"
    broken.write_bytes(b"not an image")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    done = {name: resumed / name for name in names[:3:2]}
    for name, path in done.items():
        shutil.copy(tmp_path / "single" / name, path)
    inodes = {name: path.stat().st_ino for name, path in done.items()}
    status, output = torchrun_bundle(
        HIPPOCAMPUS, ["inference.json", "multi_gpu_inference.json"], tmp_path,
        "--dataset_dir", str(data), "--output_dir", str(resumed), "--resume", "True",
    )  # fmt: skip
    assert status != 0
    assert output.count("1 of 4 inputs failed (3 processed)") == 1, output[-6000:]  # printed once, by rank 0
    assert f"{broken}: " in output
    assert {name: path.stat().st_ino for name, path in done.items()} == inodes  # not written again
    assert sorted(path.name for path in resumed.glob("*.nii.gz")) == names
    for name in names:
        np.testing.assert_array_equal(voxels(resumed / name), voxels(tmp_path / "single" / name), err_msg=name)


@pytest.mark.integration
@pytest.mark.slow
def test_two_ranks_evaluate_into_one_report_equal_to_one_process(tmp_path):
    data = hippocampus_cases(tmp_path / "data")
    run_bundle(HIPPOCAMPUS, "run", tmp_path, "--dataset_dir", str(data), "--output_dir", str(tmp_path / "single"),
               "--progress_bar", "False", config=["train.json", "evaluate.json"])  # fmt: skip
    status, output = torchrun_bundle(
        HIPPOCAMPUS, ["train.json", "evaluate.json", "multi_gpu_evaluate.json"], tmp_path,
        "--dataset_dir", str(data), "--output_dir", str(tmp_path / "ranks"),
    )  # fmt: skip
    assert status == 0, output[-6000:]
    assert output.count("evaluation report of 5 case(s)") == 1  # rank 1 logs warnings and errors only
    rows = (tmp_path / "ranks" / "dice_raw.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == [
        str(data / "imagesTr" / f"hippocampus_{c}.nii.gz") for c in CASES
    ]
    assert all(0.8 < float(row.split(",")[-1]) < 1.0 for row in rows[1:])
    for name in REPORT:
        assert (tmp_path / "ranks" / name).read_text() == (tmp_path / "single" / name).read_text(), name
    assert sorted(path.name for path in (tmp_path / "ranks").iterdir()) == sorted([*REPORT, "logs"])


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not DRIVE.is_dir(), reason=f"DRIVE not present at {DRIVE} (set DRIVE_DIR)")
def test_two_ranks_segment_drive_images_like_one_process(tmp_path):
    from PIL import Image

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for case in (26, 36):
        shutil.copy(DRIVE / "images" / f"{case}_training.tif", inputs)
    run_bundle(DRIVE_BUNDLE, "run", tmp_path, "--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "single"),
               "--progress_bar", "False", *DRIVE_ONE_PASS, config="inference.json")  # fmt: skip
    status, output = torchrun_bundle(
        DRIVE_BUNDLE, ["inference.json", "multi_gpu_inference.json"], tmp_path,
        "--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "ranks"), *DRIVE_ONE_PASS,
    )  # fmt: skip
    assert status == 0, output[-6000:]
    names = ["26_training_seg.png", "36_training_seg.png"]
    assert sorted(path.name for path in (tmp_path / "ranks").glob("*.png")) == names
    for name in names:
        single, ranks = (np.asarray(Image.open(tmp_path / folder / name)) for folder in ("single", "ranks"))
        assert (single > 0).sum() > 10_000
        np.testing.assert_array_equal(ranks, single, err_msg=name)
