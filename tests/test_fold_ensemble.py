"""Fold ensembles: which checkpoints a bundle uses, and the averaged probabilities, on the shipped hippocampus UNet
and a committed sample volume."""

import os
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from dataset_builders import SAMPLE

from monai_unet2.inferers import FoldEnsembleInferer, SlidingWindowSliceInferer, fold_dir_name, trained_checkpoints
from monai_unet2.networks import UNet

SHIPPED = SAMPLE.parent / "models" / "model.pt"


def save(network: torch.nn.Module, path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(network.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    image = np.asarray(nib.load(SAMPLE / "imagesTr" / "hippocampus_004.nii.gz").dataobj, dtype=np.float32)
    image = (image - image.mean()) / image.std()
    return torch.from_numpy(image[:, :, 12:20].copy())[None, None]  # 8 slices: enough for windows and context


def slice_inferer(**kwargs) -> SlidingWindowSliceInferer:
    return SlidingWindowSliceInferer(roi_size=(48, 64), sw_batch_size=64, slice_axis=2, context_slices=2, **kwargs)


def test_checkpoints_found_in_a_bundle(tmp_path):
    network = torch.nn.Linear(1, 1)
    with pytest.raises(FileNotFoundError, match="no trained model"):
        trained_checkpoints(tmp_path)
    single = save(network, tmp_path / "model.pt")
    assert trained_checkpoints(tmp_path) == [single] == trained_checkpoints(tmp_path, [3])  # no fold: the model
    every = save(network, tmp_path / "fold_all" / "model.pt")
    assert trained_checkpoints(tmp_path) == [every]
    folds = [save(network, tmp_path / fold_dir_name(k) / "model.pt") for k in (10, 2, 0)]
    assert trained_checkpoints(tmp_path) == [folds[2], folds[1], folds[0]]  # numeric order, fold_all left out
    assert trained_checkpoints(tmp_path, "0,all") == [folds[2], every]
    assert trained_checkpoints(tmp_path, [2]) == [folds[1]]
    with pytest.raises(FileNotFoundError, match=r"fold_3/model\.pt"):
        trained_checkpoints(tmp_path, [3])
    with pytest.raises(ValueError, match="non-negative integer or 'all'"):
        fold_dir_name("first")


@pytest.mark.slow
def test_one_fold_gives_the_single_models_logits_bit_for_bit(volume):
    network = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32)
    network.load_state_dict(torch.load(SHIPPED, weights_only=True))
    network.eval()
    blank = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32).eval()
    with torch.no_grad():
        expected = slice_inferer()(volume, network)
        ensembled = FoldEnsembleInferer(slice_inferer(), checkpoints=[SHIPPED])(volume, blank)
    assert torch.equal(ensembled, expected)


def test_folds_average_probabilities_and_reload_a_retrained_fold(volume, tmp_path):
    torch.manual_seed(0)
    members = [UNet(spatial_dims=2, in_channels=5, out_channels=3, features=8).eval() for _ in range(2)]
    paths = [save(member, tmp_path / fold_dir_name(k) / "model.pt") for k, member in enumerate(members)]
    ensemble = FoldEnsembleInferer(slice_inferer(), models_dir=tmp_path)
    template = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=8).eval()
    with torch.no_grad():
        expected = sum(torch.softmax(slice_inferer()(volume, m), dim=1) for m in members) / 2
        output = ensemble(volume, template)
        torch.testing.assert_close(torch.softmax(output, dim=1), expected, atol=1e-6, rtol=1e-5)
        assert torch.equal(output.argmax(1), expected.argmax(1))
        retrained = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=8).eval()
        time.sleep(0.01)
        save(retrained, paths[1])
        os.utime(paths[1], (time.time() + 5, time.time() + 5))
        expected = (
            torch.softmax(slice_inferer()(volume, members[0]), 1) + torch.softmax(slice_inferer()(volume, retrained), 1)
        ) / 2
        torch.testing.assert_close(torch.softmax(ensemble(volume, template), dim=1), expected, atol=1e-6, rtol=1e-5)


def test_flip_tta_members_are_averaged_as_probabilities(volume, tmp_path):
    torch.manual_seed(1)
    member = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=8).eval()
    path = save(member, tmp_path / "model.pt")
    tta = slice_inferer(flip_tta=True, tta_activation="softmax")
    with torch.no_grad():
        probabilities = tta(volume, member)
        output = FoldEnsembleInferer(tta, checkpoints=[path])(volume, member)
    torch.testing.assert_close(torch.softmax(output, dim=1), probabilities, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(probabilities, torch.softmax(slice_inferer()(volume, member), dim=1), atol=1e-3)
