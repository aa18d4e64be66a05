"""Your own dataset, no hand edits: two-channel datasets in the nnU-Net v2 and Decathlon (4D) layouts, built from the
committed hippocampus sample (tests/dataset_builders.py), go from ``python -m monai_unet2 plan`` to a trained fold,
an MLflow-registered model, predictions on the test images, an evaluation by label name and, for the Decathlon one,
a MONAI Label server, each with the documented commands only.

The training is tiny (a 16-feature UNet, 5 epochs of 10 steps of 8 slices, about 20 s of CPU) but real: its test
Dice is asserted above chance.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from bundle_runner import run_bundle
from dataset_builders import msd_dataset, nnunet_dataset
from mlflow import MlflowClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
#: the budget of these tests, set the documented way (``--override``); the planner's other decisions stand
TINY = [
    "--step_seconds", "0.5", "--override", "network.features=16", "--override", "max_epochs=5",
    "--override", "epoch_length=10", "--override", "val_interval=5",
    "--override", "volumes_per_batch=2", "--override", "slices_per_volume=4",
]  # fmt: skip


def plan(dataset: Path, bundle: Path, *extra: str) -> str:
    """``python -m monai_unet2 plan`` as a user runs it."""
    command = [sys.executable, "-m", "monai_unet2", "plan", "--dataset_dir", str(dataset), "--bundle_dir", str(bundle)]
    result = subprocess.run(
        [*command, *TINY, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def tracking(bundle: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{bundle / 'eval' / 'mlflow.db'}")


def registered_versions(bundle: Path) -> list:
    return tracking(bundle).search_model_versions(f"name='{bundle.name}'")


def evaluate(bundle: Path, cwd: Path, output: Path, *args: str) -> dict:
    run_bundle(bundle, "run", cwd, "--output_dir", str(output), *args, config=["train.json", "evaluate.json"])
    return json.loads((output / "summary.json").read_text())


@pytest.fixture(scope="module")
def nnunet_bundle(tmp_path_factory):
    work = tmp_path_factory.mktemp("nnunet")
    dataset = nnunet_dataset(work / "Dataset001_Hippocampus2ch")
    bundle = work / "hippocampus_two_channel"
    output = plan(dataset, bundle)
    assert "planned Hippocampus2Channel: 6 cases in 5 folds" in output
    run_bundle(bundle, "run", work, "--fold", "0", config="train.json")
    return dataset, bundle, work


def test_nnunet_layout_plans_trains_registers_infers_and_evaluates(nnunet_bundle):
    dataset, bundle, work = nnunet_bundle
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]
    assert metadata["inputs"]["image"]["channel_def"] == {"0": "T1", "1": "T1_inverted"}
    assert metadata["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "anterior", "2": "posterior"}
    plans = json.loads((bundle / "configs" / "plans.json").read_text())
    assert plans["max_epochs"] == 5 and plans["overrides"]["network.features"] == 16 and plans["context_slices"] == 2
    assert sorted(p.name for p in (bundle / "models").iterdir()) == ["fold_0", "model.pt", "model.pt.trained.json"]
    (version,) = registered_versions(bundle)
    assert version.tags["key_metric"] == "val_mean_dice"
    assert tracking(bundle).get_model_version_by_alias(bundle.name, "champion").version == version.version
    (run,) = tracking(bundle).search_runs([tracking(bundle).get_experiment_by_name(bundle.name).experiment_id])
    assert run.data.params["fold"] == "0" and run.data.params["epoch_length"] == "10"

    run_bundle(bundle, "run", work, "--dataset_dir", str(dataset / "imagesTs"), "--output_dir", str(work / "pred"),
               config="inference.json")  # fmt: skip
    written = sorted(path.name for path in (work / "pred").iterdir() if path.is_file())
    assert written == ["hippocampus_199_seg.nii.gz", "hippocampus_225_seg.nii.gz"]
    assert any((work / "pred" / "logs").glob("*.log"))
    for name in written:
        case = name.replace("_seg.nii.gz", "")
        source, label = nib.load(dataset / "imagesTs" / f"{case}_0000.nii.gz"), nib.load(work / "pred" / name)
        assert label.shape == source.shape and np.allclose(label.affine, source.affine)
        assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2}

    summary = evaluate(bundle, work, work / "test_eval", "--dataset_dir", str(dataset), "--split", "test")
    assert summary["cases"] == 2 and summary["checkpoints"] == [str(bundle / "models" / "fold_0" / "model.pt")]
    with open(work / "test_eval" / "dice_raw.csv") as handle:
        assert next(csv.reader(handle)) == ["filename", "anterior", "posterior", "mean"]
    assert summary["mean"]["dice"] > 0.1, summary  # learnt something in 50 steps (chance is ~0)


def test_decathlon_4d_layout_trains_two_folds_and_ensembles_them(tmp_path):
    dataset = msd_dataset(tmp_path / "Task99_Hippocampus2ch")
    bundle = tmp_path / "hippocampus_4d"
    plan(dataset, bundle, "--folds", "3")
    assert [len(fold["val"]) for fold in json.loads((bundle / "configs" / "splits.json").read_text())] == [2, 2, 2]
    run_bundle(bundle, "run", tmp_path, "--fold", "0", config="train.json")
    run_bundle(bundle, "run", tmp_path, "--fold", "1", "--max_epochs", "2", config="train.json")
    assert len(registered_versions(bundle)) == 2
    output = run_bundle(bundle, "run", tmp_path, "--output_dir", str(tmp_path / "pred"), config="inference.json")
    assert "inference with 2 model(s)" in output
    assert sorted(path.name for path in (tmp_path / "pred").iterdir() if path.is_file()) == [
        "hippocampus_199_seg.nii.gz",
        "hippocampus_225_seg.nii.gz",
    ]
    fold_1 = evaluate(bundle, tmp_path, tmp_path / "fold_1", "--split", "validation", "--fold", "1")
    assert fold_1["checkpoints"] == [str(bundle / "models" / "fold_1" / "model.pt")] and fold_1["cases"] == 2


@pytest.mark.monailabel
def test_a_planned_4d_bundle_is_served_by_monai_label(tmp_path, monkeypatch):
    from monailabel_utils import infer, make_monaibundle_app, require_monailabel_venv, start_monailabel

    require_monailabel_venv()
    dataset = msd_dataset(tmp_path / "Task99_Hippocampus2ch", training=4, test=1)
    bundle = tmp_path / "bundles" / "hippocampus_4d"
    plan(dataset, bundle, "--override", "max_epochs=1", "--override", "epoch_length=2")
    run_bundle(bundle, "run", tmp_path, "--fold", "0", config="train.json")
    (image,) = (dataset / "imagesTs").iterdir()
    case = image.name.replace(".nii.gz", "")
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(image, studies)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's monai_unet2 in the server's interpreter
    app = make_monaibundle_app(tmp_path / "apps" / "monaibundle", {bundle.name: bundle})
    server, url = start_monailabel(app, str(studies), [bundle.name], tmp_path)
    with server:
        model = requests.get(f"{url}/info/", timeout=30).json()["models"][bundle.name]
        assert model["labels"] == {"anterior": 1, "posterior": 2} and model["dimension"] == 3
        (tmp_path / "served.nii.gz").write_bytes(infer(url, bundle.name, case, server.log_path))
    served = nib.load(tmp_path / "served.nii.gz")
    assert served.shape == nib.load(image).shape[:3]
    assert set(np.unique(np.asarray(served.dataobj))) <= {0, 1, 2}
