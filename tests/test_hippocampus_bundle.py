"""The hippocampus bundle: the shape of its configs (each fact stated once, one preprocessing chain), and runs the
way users run it, ``python -m monai.bundle ...`` from outside the bundle (integration)."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runner import run_bundle
from monai.bundle import ConfigParser
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
CONFIGS = BUNDLE / "configs"
SCHEMA = ROOT / "bundles" / "metadata_schema.json"
SAMPLE = BUNDLE / "sample_data"
DCMQI_CT = ROOT / "tests" / "data" / "dicom" / "dcmqi_ct3slice" / "ct"
CASE = "hippocampus_004.nii.gz"
#: the dataset facts plans.json states and train.json / inference.json expose as ids of the same name
FACTS = ("orientation", "spacing", "slice_axis", "context_slices", "normalization", "roi_size")
#: the training budget plans.json states and train.json exposes
BUDGET = ("max_epochs", "epoch_length", "volumes_per_batch", "slices_per_volume", "val_interval", "learning_rate")


def bundle(command: str, cwd: Path, *args: str, config: str | list[str] | None = None, timeout: int = 600) -> str:
    return run_bundle(BUNDLE, command, cwd, *args, config=config, timeout=timeout)


def read(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def parser(*names: str) -> ConfigParser:
    """The bundle's configs merged in order, as ``monai.bundle run --bundle_root <bundle>`` reads them."""
    config = ConfigParser()
    config.read_config([str(CONFIGS / name) for name in names])
    config["bundle_root"] = str(BUNDLE)
    return config


def dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    p, t = prediction == label, truth == label
    return 2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum())


def test_each_fact_is_stated_once():
    plans, metadata = read("plans.json"), read("metadata.json")
    overlays = {name: read(name) for name in ("evaluate.json", "multi_gpu_train.json")}
    for name in ("train.json", "inference.json"):
        config = read(name)
        for fact in FACTS:
            source = "view_plan" if name == "train.json" and fact in ("slice_axis", "roi_size") else "plans"
            assert config[fact] == f"$@{source}['{fact}']", (name, fact)
            assert all(fact not in overlay for overlay in overlays.values()), fact
        assert config["num_classes"] == "$len(@labels)"
        assert name != "train.json" or config["view_plan"] == "$monai_unet2.bundle_config.view_plan(@plans, @view)"
        assert all(config[key] == f"$@plans['{key}']" for key in BUDGET if name == "train.json")
        assert config["in_channels"] == "$(2 * @context_slices + 1) * len(@input_channels)"
    assert set(FACTS) <= set(plans) and "in_channels" not in plans["network"]
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "anterior",
        "2": "posterior",
    }
    for name in ("train.json", "inference.json", "evaluate.json", "multi_gpu_train.json"):
        text = (CONFIGS / name).read_text()
        restated = [value for value in ("anterior", "posterior", "networks.UNet", '"RAS"') if value in text]
        restated += [fact for fact in ("spacing", "roi_size") if json.dumps(plans[fact]) in text]
        assert not restated, f"{name} restates {restated}: state it in plans.json or metadata.json only"


def test_training_validation_and_inference_preprocess_a_volume_alike():
    train, inference = parser("train.json"), parser("inference.json")
    validating, inferring = read("train.json")["slice_inferer"], read("inference.json")["fold_ensemble"]["inferer"]
    # inference differs only in how it covers a slice (whole slices, never smaller than the training window; bf16)
    fast = {"roi_size": None, "min_roi_size": "@roi_size", "size_divisible_by": "$2 ** @network_def.depth"}
    fast |= {"sw_batch_size": 16, "amp": "auto", "channels_last": True}
    assert inferring == {**validating, **fast} and validating["roi_size"] == "@roi_size"
    image, label = SAMPLE / "imagesTr" / CASE, SAMPLE / "labelsTr" / CASE
    inferred = inference.get_parsed_content("preprocessing")({"image": str(image)})
    validated = train.get_parsed_content("validate#preprocessing")({"image": str(image), "label": str(label)})
    trained = Compose(train.get_parsed_content("train#deterministic_transforms"))(
        {"image": str(image), "label": str(label)}
    )
    for data in (validated, trained):
        assert torch.equal(data["image"], inferred["image"]) and data["image"].dtype == torch.float32
        assert torch.equal(data["image"].affine, inferred["image"].affine)
        assert data["label"].dtype == torch.uint8 and data["label"].shape == data["image"].shape
    assert set(torch.unique(validated["label"]).tolist()) == {0, 1, 2}
    assert abs(float(inferred["image"].mean())) < 1e-4 and abs(float(inferred["image"].std()) - 1) < 1e-3
    steps = [type(t).__name__ for t in inference.get_parsed_content("preprocessing").flatten().transforms]
    steps.remove("CheckModalityd")  # inference only: refuses inputs of another modality, changes no voxel
    assert steps == [type(t).__name__ for t in train.get_parsed_content("validate#preprocessing").transforms]
    assert "Spacingd" in steps and "DicomSeriesReader" in read("train.json")["loader"]["reader"]


def test_network_channels_follow_labels_inputs_and_context_slices():
    metadata = read("metadata.json")["network_data_format"]
    network = parser("inference.json").get_parsed_content("network_def")
    with torch.no_grad():
        assert network(torch.zeros(1, 5, 48, 64)).shape == (1, metadata["outputs"]["pred"]["num_channels"], 48, 64)
    assert metadata["inputs"]["image"]["num_channels"] == len(metadata["inputs"]["image"]["channel_def"])
    # what `--context_slices 0` does: one id changes the network, the training sampler and the inferer together
    plain_2d = parser("train.json")
    plain_2d["context_slices"] = 0
    seen_channels = []

    def recording_network(batch: torch.Tensor) -> torch.Tensor:
        seen_channels.append(batch.shape[1])
        return torch.zeros(batch.shape[0], 3, *batch.shape[2:])

    plain_2d.get_parsed_content("validate#inferer")(torch.zeros(1, 1, 40, 50, 6), recording_network)
    assert set(seen_channels) == {1}
    with torch.no_grad():
        assert plain_2d.get_parsed_content("network_def")(torch.zeros(1, 1, 48, 64)).shape == (1, 3, 48, 64)
    image, label = SAMPLE / "imagesTr" / CASE, SAMPLE / "labelsTr" / CASE
    volume = Compose(plain_2d.get_parsed_content("train#deterministic_transforms"))(
        {"image": str(image), "label": str(label)}
    )
    samples = plain_2d.get_parsed_content("train#random_transforms")[0](volume)
    assert {sample["image"].shape[0] for sample in samples} == {1}


@pytest.mark.integration
@pytest.mark.slow
def test_metadata_verifies_against_the_schema_kept_in_the_repo(tmp_path):
    meta = BUNDLE / "configs" / "metadata.json"
    output = bundle("verify_metadata", tmp_path, "--meta_file", str(meta), "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in output
    broken = json.loads(meta.read_text())
    del broken["network_data_format"]["outputs"]["pred"]["channel_def"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            str(tmp_path / "broken.json"),
            "--filepath",
            str(SCHEMA),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "channel_def" in result.stdout + result.stderr


def test_labels_and_dimension_for_monai_label():
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    outputs = meta["network_data_format"]["outputs"]["pred"]
    assert outputs["channel_def"] == {"0": "background", "1": "anterior", "2": "posterior"}
    assert len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"]) == 3


@pytest.mark.integration
@pytest.mark.slow
def test_network_in_out_and_torchscript_export(tmp_path):
    # The network is 2D on 2k+1 = 5 channels; the bundle's input is a 3D volume the inferer slices.
    network_shape = [
        "--_meta_#network_data_format#inputs#image#num_channels",
        "5",
        "--_meta_#network_data_format#inputs#image#spatial_shape",
        "[48, 64]",
        "--_meta_#network_data_format#outputs#pred#spatial_shape",
        "[48, 64]",
    ]
    output = bundle("verify_net_in_out", tmp_path, "network_def", *network_shape, config="inference.json")
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
        "[1, 5, 48, 64]",
        config="inference.json",
    )
    from monai_unet2.networks import UNet

    network = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32)
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    network.eval()
    image = nib.load(SAMPLE / "imagesTr" / "hippocampus_004.nii.gz").get_fdata(dtype=np.float32)
    image = (image - image.mean()) / image.std()
    middle = image.shape[2] // 2
    stack = torch.from_numpy(np.moveaxis(image[:, :, middle - 2 : middle + 3], 2, 0)[None].copy())
    stack = torch.nn.functional.pad(stack, (0, 64 - stack.shape[-1], 0, 48 - stack.shape[-2]))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(stack), network(stack), rtol=1e-4, atol=1e-4)


@pytest.mark.integration
@pytest.mark.slow
def test_inference_writes_labels_in_each_inputs_space_with_dice_above_0_8(tmp_path):
    bundle("run", tmp_path, "--output_dir", str(tmp_path / "out"), config="inference.json")
    written = sorted((tmp_path / "out").glob("*_seg.nii.gz"))
    assert len(written) == 12
    scores = []
    for path in written:
        case = path.name.replace("_seg.nii.gz", ".nii.gz")
        source, truth = nib.load(SAMPLE / "imagesTr" / case), nib.load(SAMPLE / "labelsTr" / case)
        result = nib.load(path)
        assert result.shape == source.shape
        np.testing.assert_allclose(result.affine, source.affine, atol=1e-5)
        labels = np.asarray(result.dataobj)
        assert set(np.unique(labels)) <= {0, 1, 2}
        truth_labels = np.asarray(truth.dataobj).astype(np.uint8)
        scores.append([dice(labels, truth_labels, 1), dice(labels, truth_labels, 2)])
    anterior, posterior = np.mean(scores, axis=0)
    print(f"sample Dice with shipped weights: anterior {anterior:.3f}, posterior {posterior:.3f}")
    assert anterior > 0.8 and posterior > 0.8


@pytest.mark.integration
@pytest.mark.slow
def test_evaluate_writes_per_case_dice_and_hd95(tmp_path):
    bundle("run", tmp_path, "--output_dir", str(tmp_path / "evaluation"), config=["train.json", "evaluate.json"])
    with open(tmp_path / "evaluation" / "dice_raw.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and list(rows[0]) == ["filename", "anterior", "posterior", "mean"]
    assert np.mean([float(row["anterior"]) for row in rows]) > 0.8
    assert np.mean([float(row["posterior"]) for row in rows]) > 0.8
    with open(tmp_path / "evaluation" / "hd95_raw.csv") as handle:
        hd95 = [float(row["mean"]) for row in csv.DictReader(handle)]
    assert len(hd95) == 12 and 0 < np.mean(hd95) < 5.0  # millimetres at 1 mm voxels
    summary = json.loads((tmp_path / "evaluation" / "summary.json").read_text())
    assert summary["cases"] == 12 and summary["checkpoints"] == [str(BUNDLE / "models" / "model.pt")]
    assert summary["labels"]["anterior"]["missed"] == summary["labels"]["posterior"]["missed"] == 0
    assert summary["labels"]["anterior"]["dice"]["mean"] == pytest.approx(
        np.mean([float(r["anterior"]) for r in rows]), abs=1e-4
    )


@pytest.mark.integration
@pytest.mark.slow
def test_dicom_series_input_gets_nifti_and_dicom_seg_on_the_ct_grid(tmp_path):
    from monai.transforms import LoadImage

    from monai_unet2.data import DicomSeriesReader, seg_to_grid

    shutil.copytree(DCMQI_CT, tmp_path / "inputs" / "ct_series")
    output = bundle(
        "run",
        tmp_path,
        "--dataset_dir",
        str(tmp_path / "inputs"),
        "--output_dir",
        str(tmp_path / "out"),
        "--output_format",
        "dicom_seg",
        "--force_modality",
        "True",  # an MR model on a CT: refused without it (tests/test_modality_guard.py)
        config="inference.json",
    )
    assert "DICOM Modality CT, but this model was trained on MR" in output and "segmenting it anyway" in output
    ct = LoadImage(reader=DicomSeriesReader(), image_only=True)(str(DCMQI_CT))
    label = nib.load(tmp_path / "out" / "ct_series_seg.nii.gz")
    assert label.shape == tuple(ct.shape)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(ras_to_lps @ label.affine, ras_to_lps @ np.asarray(ct.affine), atol=1e-4)
    segmentation = tmp_path / "out" / "ct_series_seg.dcm"
    assert segmentation.is_file()
    decoded, segments = seg_to_grid(str(segmentation), np.asarray(ct.affine), ct.shape)
    labels = np.asarray(label.dataobj)
    assert [segment["label"] for segment in segments] == ["anterior", "posterior"]
    for channel, value in enumerate((1, 2)):
        np.testing.assert_array_equal(decoded[channel] > 0, labels == value)


@pytest.mark.integration
@pytest.mark.slow
def test_short_training_run_from_another_directory(tmp_path):
    output = bundle(
        "run",
        tmp_path,
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "eval"),
        "--max_epochs",
        "1",
        "--epoch_length",
        "3",
        "--slices_per_volume",
        "2",
        config="train.json",
    )
    assert "val_mean_dice" in output and "boundary_weight" in output
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    shipped = torch.load(BUNDLE / "models" / "model.pt", weights_only=True)
    assert state.keys() == shipped.keys()
    assert not (BUNDLE / "eval").exists()
