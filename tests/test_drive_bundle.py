"""The DRIVE vessel bundle: the shape of its configs, and runs the way users run it, ``python -m monai.bundle ...``
from outside the bundle (integration).

DRIVE may not be redistributed, so every test that reads it needs a copy of its ``training/`` folder: at
``../shared/data/drive/training`` (relative to the repository root) or where ``DRIVE_DIR`` points, and is skipped
without it.
"""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_runner import DRIVE_ONE_PASS, run_bundle
from monai.bundle import ConfigParser
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "drive_vessel_u2net_segmentation"
CONFIGS = BUNDLE / "configs"
SCHEMA = ROOT / "bundles" / "metadata_schema.json"
DRIVE = Path(os.environ.get("DRIVE_DIR", ROOT.parent / "shared" / "data" / "drive" / "training"))
HELD_OUT = (21, 26, 31, 36)
#: the dataset facts plans.json states and train.json / inference.json expose as ids of the same name
FACTS = ("normalization", "roi_size", "threshold")

needs_drive = pytest.mark.skipif(not DRIVE.is_dir(), reason=f"DRIVE not present at {DRIVE} (set DRIVE_DIR)")


def bundle(command: str, cwd: Path, *args: str, config: str | None = None, timeout: int = 600) -> str:
    return run_bundle(BUNDLE, command, cwd, *args, config=config, timeout=timeout)


def read_gif(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


def f1(prediction: np.ndarray, truth: np.ndarray, fov: np.ndarray) -> float:
    p, t = prediction & fov, truth & fov
    return 2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum())


def read(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def parser(*names: str) -> ConfigParser:
    """The bundle's configs merged in order, as ``monai.bundle run --bundle_root <bundle>`` reads them."""
    config = ConfigParser()
    config.read_config([str(CONFIGS / name) for name in names])
    config["bundle_root"] = str(BUNDLE)
    return config


def normalised_image(case: int) -> torch.Tensor:
    """The RGB image as the bundle feeds it, (1, 3, H, W) z-scored per channel (rows = height)."""
    rgb = np.asarray(Image.open(DRIVE / "images" / f"{case}_training.tif"), dtype=np.float32)
    rgb = (rgb - rgb.mean(axis=(0, 1))) / rgb.std(axis=(0, 1))
    return torch.from_numpy(np.moveaxis(rgb, 2, 0)[None].copy())


def test_each_fact_is_stated_once():
    plans = read("plans.json")
    for name in ("train.json", "inference.json"):
        config = read(name)
        for fact in FACTS:
            assert config[fact] == f"$@plans['{fact}']", (name, fact)
        assert config["in_channels"] == "$len(@input_channels)" and config["out_channels"] == "$@num_classes - 1"
    assert read("train.json")["label_threshold"] == "$@plans['label_threshold']"
    for name in ("train.json", "inference.json", "evaluate.json", "multi_gpu_train.json"):
        text = (CONFIGS / name).read_text()
        restated = [value for value in ('"vessel"', "networks.U2Net", '"small"') if value in text]
        restated += [fact for fact in ("roi_size",) if json.dumps(plans[fact]) in text]
        assert not restated, f"{name} restates {restated}: state it in plans.json or metadata.json only"
        assert "/work/" not in text and "/home/" not in text, f"{name} holds an absolute path"


def test_network_channels_follow_the_metadata():
    metadata = read("metadata.json")["network_data_format"]
    network = parser("inference.json").get_parsed_content("network_def").eval()
    with torch.no_grad():
        output = network(torch.zeros(1, metadata["inputs"]["image"]["num_channels"], 128, 128))
    assert output.shape == (1, metadata["outputs"]["pred"]["num_channels"], 128, 128)
    assert read("train.json")["validate"]["inferer"] == read("inference.json")["inferer"]


@needs_drive
def test_training_validation_and_inference_preprocess_an_image_alike():
    case = {"image": DRIVE / "images" / "26_training.tif", "label": DRIVE / "1st_manual" / "26_manual1.gif"}
    case = {key: str(path) for key, path in dict(case, mask=DRIVE / "mask" / "26_training_mask.gif").items()}
    inferred = parser("inference.json").get_parsed_content("preprocessing")({"image": case["image"]})
    validated = parser("train.json").get_parsed_content("validate#preprocessing")(case)
    assert torch.equal(validated["image"], inferred["image"]) and inferred["image"].shape == (3, 565, 584)
    torch.testing.assert_close(inferred["image"][None], normalised_image(26).transpose(2, 3), rtol=0, atol=5e-3)
    assert set(torch.unique(validated["label"]).tolist()) == set(torch.unique(validated["mask"]).tolist()) == {0, 1}


@pytest.mark.integration
@pytest.mark.slow
@needs_drive
def test_metadata_verifies_and_names_the_vessel_label_for_monai_label(tmp_path):
    meta_file = BUNDLE / "configs" / "metadata.json"
    output = bundle("verify_metadata", tmp_path, "--meta_file", str(meta_file), "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in output
    meta = json.loads(meta_file.read_text())["network_data_format"]
    assert meta["inputs"]["image"]["num_channels"] == 3 and len(meta["inputs"]["image"]["spatial_shape"]) == 2
    # MONAI Label takes the label values from channel_def minus "background": the thresholded output's 1 is vessel.
    assert meta["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "vessel"}


@pytest.mark.integration
@pytest.mark.slow
@needs_drive
def test_network_in_out_and_torchscript_export_match_the_eager_model(tmp_path):
    output = bundle("verify_net_in_out", tmp_path, "network_def", config="inference.json")
    assert "data shape of network is verified with no error" in output
    exported = tmp_path / "model.ts"
    bundle(
        "ckpt_export",
        tmp_path,
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(BUNDLE / "models" / "model.pt"),
        "--use_trace",
        "True",
        "--input_shape",
        "[1, 3, 128, 128]",
        config="inference.json",
    )
    from monai_unet2.networks import U2Net

    network = U2Net(spatial_dims=2, in_channels=3, out_channels=1, variant="small", deep_supervision=True)
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    network.eval()
    patch = normalised_image(26)[..., 100:228, 100:228]
    with torch.no_grad():
        eager = network(patch)
        torch.testing.assert_close(torch.jit.load(str(exported))(patch), eager, rtol=1e-4, atol=1e-4)
    truth = read_gif(DRIVE / "1st_manual" / "26_manual1.gif")[100:228, 100:228]
    score = f1(eager[0, 0].numpy() > 0, truth, np.ones_like(truth))
    assert score > 0.65, f"the exported weights do not segment vessels: F1 {score:.3f} on a 128x128 patch"


@pytest.mark.integration
@pytest.mark.slow
@needs_drive
def test_inference_writes_binary_pngs_of_the_input_size(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for case in (26, 36):
        shutil.copy(DRIVE / "images" / f"{case}_training.tif", inputs)
    bundle(
        "run", tmp_path, "--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "out"), *DRIVE_ONE_PASS,
        config="inference.json",
    )  # fmt: skip
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [path.name for path in written] == ["26_training_seg.png", "36_training_seg.png"]
    for case, path in zip((26, 36), written):
        mask = Image.open(path)
        assert mask.size == Image.open(inputs / f"{case}_training.tif").size == (565, 584)
        values = np.asarray(mask)
        assert set(np.unique(values)) == {0, 255}
        truth = read_gif(DRIVE / "1st_manual" / f"{case}_manual1.gif")
        fov = read_gif(DRIVE / "mask" / f"{case}_training_mask.gif")
        assert f1(values > 0, truth, fov) > 0.75


@pytest.mark.integration
@pytest.mark.slow
@needs_drive
def test_pyfunc_model_answers_like_the_bundle_on_a_fundus_image(tmp_path):
    """The pyfunc form every registered version has (``mlflow models serve`` calls the same ``predict``), and the
    bundle's inference as shipped (flip TTA, overlap 0.5) on a validation image."""
    import mlflow

    from monai_unet2.tracking.bundle_model import BUNDLE_ARTIFACT, stage_bundle
    from monai_unet2.tracking.registry import PYFUNC_CODE

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(DRIVE / "images" / "21_training.tif", inputs)
    bundle(
        "run", tmp_path, "--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "out"), config="inference.json"
    )
    expected = np.asarray(Image.open(tmp_path / "out" / "21_training_seg.png")) > 0
    truth, fov = read_gif(DRIVE / "1st_manual" / "21_manual1.gif"), read_gif(DRIVE / "mask" / "21_training_mask.gif")
    assert f1(expected, truth, fov) > 0.8

    staged = stage_bundle(BUNDLE, torch.load(BUNDLE / "models" / "model.pt", weights_only=True), tmp_path / "bundle")
    mlflow.pyfunc.save_model(
        path=str(tmp_path / "model"), python_model=PYFUNC_CODE, artifacts={BUNDLE_ARTIFACT: str(staged)}
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    rgb = np.asarray(Image.open(DRIVE / "images" / "21_training.tif").convert("RGB"))
    served = np.asarray(model.predict({"image": rgb.tolist()}))
    assert served.shape == rgb.shape[:2] == (584, 565)
    assert set(np.unique(served)) == {0, 1}
    assert np.array_equal(served > 0, expected)
    with pytest.raises(ValueError, match=r"rows x columns x 3\), got shape \(584, 565\)"):
        model.predict({"image": rgb[..., 0].tolist()})


@pytest.mark.integration
@pytest.mark.slow
@needs_drive
def test_evaluate_writes_per_image_f1_inside_the_fov(tmp_path):
    output = bundle(
        "run",
        tmp_path,
        "--output_dir",
        str(tmp_path / "evaluation"),
        "--dataset_dir",
        str(DRIVE),
        "--flip_tta",
        "False",
        "--validate#inferer#overlap",
        "0.25",
        config=["train.json", "evaluate.json"],
    )
    assert "f1_fov" in output and "hd95_px" in output
    with open(tmp_path / "evaluation" / "f1_fov_raw.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["filename"]).name for row in rows] == [f"{n}_training.tif" for n in HELD_OUT]
    scores = [float(row["mean"]) for row in rows]
    assert np.mean(scores) >= 0.75 and min(scores) > 0.7
    with open(tmp_path / "evaluation" / "hd95_px_raw.csv") as handle:
        hd95 = [float(row["mean"]) for row in csv.DictReader(handle)]
    assert len(hd95) == 4 and 0 < np.mean(hd95) < 30.0


@pytest.mark.integration
@pytest.mark.slow
@needs_drive
def test_short_training_run_from_another_directory(tmp_path):
    output = bundle(
        "run",
        tmp_path,
        "--dataset_dir",
        str(DRIVE),
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "eval"),
        "--max_epochs",
        "1",
        "--epoch_length",
        "2",
        "--val_interval",
        "1",
        "--validation_every",
        "20",
        "--patches_per_image",
        "2",
        config="train.json",
    )
    assert "val_f1_fov" in output and "boundary_weight" in output
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    shipped = torch.load(BUNDLE / "models" / "model.pt", weights_only=True)
    assert state.keys() == shipped.keys()
    assert any(not torch.equal(state[key], shipped[key]) for key in shipped)
    assert not (BUNDLE / "eval").exists()
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'eval' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("drive_vessel_u2net_segmentation")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert {"val_f1_fov", "boundary_weight"} <= set(run.data.metrics)
