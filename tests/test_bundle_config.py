"""monai_unet2.bundle_config: reading a bundle's facts and building its shared components, on the committed sample."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.transforms import Compose, LoadImaged

from monai_unet2.bundle_config import (
    build_network,
    input_channel_names,
    intensity_normalization,
    label_names,
    per_class_dice,
    read_plans,
    volume_preprocessing,
)
from monai_unet2.networks import UNet

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
SAMPLE = BUNDLE / "sample_data"
CASE = "hippocampus_004.nii.gz"
UNET = {"_target_": "monai_unet2.networks.UNet", "spatial_dims": 2, "features": 8}


def bundle_with(tmp_path: Path, **files: dict) -> Path:
    """A bundle folder whose ``configs/`` holds the given JSON files (``plans={...}`` -> ``plans.json``)."""
    (tmp_path / "configs").mkdir()
    for name, content in files.items():
        (tmp_path / "configs" / f"{name}.json").write_text(json.dumps(content))
    return tmp_path


def test_the_shipped_bundle_reads_its_facts():
    assert read_plans(BUNDLE)["context_slices"] == 2
    assert label_names(BUNDLE) == {"0": "background", "1": "anterior", "2": "posterior"}
    assert input_channel_names(BUNDLE) == {"0": "MRI"}


def test_a_missing_fact_names_the_file_and_the_key(tmp_path):
    bundle = bundle_with(tmp_path, plans={"roi_size": [48, 64]})
    plans = read_plans(bundle)
    with pytest.raises(KeyError, match=r"plans\.json has no 'context_slices' \(keys: roi_size\)"):
        plans["context_slices"]
    with pytest.raises(FileNotFoundError, match="is --bundle_root the bundle folder"):
        read_plans(tmp_path / "elsewhere")


def test_label_values_must_be_0_to_n_minus_1(tmp_path):
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "background", "2": "posterior"}
    with pytest.raises(ValueError, match=r"channel_def keys must be 0, 1, \.\.\., n-1; got \['0', '2'\]"):
        label_names(bundle_with(tmp_path, metadata=metadata))


def test_the_network_takes_its_channel_counts_from_the_configs():
    network = build_network(UNET, in_channels=5, out_channels=3)
    with torch.no_grad():
        assert network(torch.zeros(1, 5, 48, 64)).shape == (1, 3, 48, 64)
    with pytest.raises(ValueError, match=r"states \['in_channels'\]; they are derived"):
        build_network(dict(UNET, in_channels=5), in_channels=5, out_channels=3)


@pytest.mark.parametrize("bundle", ["hippocampus_unet25d_segmentation", "drive_vessel_u2net_segmentation"])
def test_training_starts_from_pretrained_weights_when_given(bundle, tmp_path):
    """``--pretrained_weights`` loads a state dict into ``network_def``; weights of another network are refused."""
    from monai.bundle import ConfigParser

    from monai_unet2.handlers import WeightsFileError, with_pretrained_weights

    root = ROOT / "bundles" / bundle
    shipped = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser.update({"bundle_root": str(root), "pretrained_weights": str(root / "models" / "model.pt")})
    network = parser.get_parsed_content("network_def")
    assert all(torch.equal(network.state_dict()[key], value) for key, value in shipped.items())
    assert with_pretrained_weights(network, None) is network  # the default (null) keeps the initialisation
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(WeightsFileError, match=r"other\.pt"):
        with_pretrained_weights(network, tmp_path / "other.pt")


def test_half_precision_storage_halves_the_file_and_keeps_what_float16_cannot_hold(tmp_path):
    """``save_half_precision`` stores float32 tensors as float16 (half the bytes, relative error <= 2**-11), keeps a
    tensor beyond float16's range (a batch-norm running variance, as training produced for a coronal view model)
    in float32, and the file loads into the float32 network."""
    from monai_unet2.handlers import load_weights_into, save_half_precision

    network = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=8)
    state = network.state_dict()
    state["up1.conv.1.running_var"][0] = 1.5e5
    torch.save(state, tmp_path / "float32.pt")
    counts = save_half_precision(tmp_path / "float32.pt", tmp_path / "float16.pt")

    stored = torch.load(tmp_path / "float16.pt", map_location="cpu", weights_only=True)
    assert stored["up1.conv.1.running_var"].dtype == torch.float32
    assert stored["inc.0.weight"].dtype == torch.float16
    floats = sum(value.dtype == torch.float32 for value in state.values())
    assert counts == {"tensors": len(state), "halved": floats - 1, "kept_float32": 1}
    assert (tmp_path / "float16.pt").stat().st_size < 0.6 * (tmp_path / "float32.pt").stat().st_size
    loaded = load_weights_into(UNet(spatial_dims=2, in_channels=5, out_channels=3, features=8), tmp_path / "float16.pt")
    for key, value in loaded.state_dict().items():
        assert value.dtype == state[key].dtype
        torch.testing.assert_close(value, state[key], rtol=2**-11, atol=6e-8)


def test_volumes_at_another_spacing_are_resampled_and_inverted_back(tmp_path):
    """A copy of a 1 mm sample case that claims 0.5 mm voxels: half the size once resampled to 1 mm."""
    half_mm = {}
    for key, folder in (("image", "imagesTr"), ("label", "labelsTr")):
        source = nib.load(SAMPLE / folder / CASE)
        affine = source.affine @ np.diag([0.5, 0.5, 0.5, 1.0])
        half_mm[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(source.dataobj), affine), half_mm[key])
    chain = Compose(
        [
            LoadImaged(["image", "label"], image_only=True),
            *volume_preprocessing(
                label_key="label",
                labels={"0": "background", "1": "anterior", "2": "posterior"},
                spacing=[1.0, 1.0, 1.0],
                normalization={"name": "zscore", "channel_wise": True},
            ),
        ]
    )
    data = chain(half_mm)
    original = nib.load(half_mm["image"]).shape
    assert data["image"].shape[1:] == data["label"].shape[1:]
    assert np.all(np.abs(np.array(data["image"].shape[1:]) - np.array(original) / 2) <= 1)
    assert data["image"].dtype == torch.float32 and data["label"].dtype == torch.uint8
    assert set(torch.unique(data["label"]).tolist()) == {0, 1, 2}
    np.testing.assert_allclose(np.diag(np.asarray(data["image"].affine))[:3], [1.0, 1.0, 1.0])
    restored = chain.inverse(data)
    assert restored["image"].shape[1:] == restored["label"].shape[1:] == original


def test_a_label_outside_the_declared_values_is_refused(tmp_path):
    chain = Compose(
        [LoadImaged(["image", "label"], image_only=True), *volume_preprocessing(label_key="label", labels={"0": "bg"})]
    )
    case = {key: str(SAMPLE / folder / CASE) for key, folder in (("image", "imagesTr"), ("label", "labelsTr"))}
    with pytest.raises(RuntimeError) as caught:
        chain(case)
    assert f"{CASE}: label values outside the expected set {{0}}: 1 (1832 voxels), 2 (1866 voxels)" in str(
        caught.value.__cause__
    )


def test_an_unknown_normalisation_is_refused():
    assert type(intensity_normalization("image", {"name": "zscore", "nonzero": True})[0]).__name__ == (
        "NormalizeIntensityd"
    )
    with pytest.raises(
        ValueError, match=r"normalization 'percentile' in plans\.json is not one of \['ct', 'per_channel', 'zscore'\]"
    ):
        intensity_normalization("image", {"name": "percentile"})
    with pytest.raises(ValueError, match="unexpected keyword argument 'lower'"):
        intensity_normalization("image", {"name": "zscore", "lower": 0.5})


def test_one_dice_metric_per_foreground_label_on_its_own_channel():
    metrics = per_class_dice({"0": "background", "1": "anterior", "2": "posterior"})
    assert list(metrics) == ["val_dice_anterior", "val_dice_posterior"]
    label = torch.zeros(3, 4, 4)
    label[0], label[1, :2], label[2, 2:] = 1, 1, 1
    label[0, :, :] = 1 - label[1] - label[2]
    prediction = label.clone()
    prediction[2, 2:, :2], prediction[0, 2:, :2] = 0, 1  # half of "posterior" missed
    engine = Engine(lambda engine, batch: [{"pred": prediction, "label": label}])
    for name, metric in metrics.items():
        metric.attach(engine, name)
    engine.run([0], max_epochs=1)
    assert engine.state.metrics["val_dice_anterior"] == pytest.approx(1.0)
    assert engine.state.metrics["val_dice_posterior"] == pytest.approx(2 * 4 / (4 + 8))


def test_the_plans_file_travels_with_the_configs(tmp_path):
    """Bundles copied by configs/ folder (MLflow staging, MONAI Label) keep their facts."""
    shutil.copytree(BUNDLE / "configs", tmp_path / "configs")
    assert read_plans(tmp_path) == read_plans(BUNDLE)
