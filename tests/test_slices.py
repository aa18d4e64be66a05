"""2.5D slice sampling on the committed MSD hippocampus sample (real MR volumes and labels)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ResizeWithPadOrCropd

from monai_unet2.transforms import RandSliceWithContextd, SliceWithContextd, stack_slice_context

SAMPLE = Path(__file__).resolve().parents[1] / "bundles" / "hippocampus_unet25d_segmentation" / "sample_data"
CASES = sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))


def _case(i: int = 0) -> dict:
    image = np.asarray(nib.load(CASES[i]).dataobj, dtype=np.float32)[None]
    label = np.asarray(nib.load(SAMPLE / "labelsTr" / CASES[i].name).dataobj).astype(np.int64)[None]
    return {"image": image, "label": label}


def _loaded(i: int = 0) -> dict:
    loader = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"])])
    return loader({"image": str(CASES[i]), "label": str(SAMPLE / "labelsTr" / CASES[i].name)})


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize("context_slices", [0, 1, 2])
def test_stack_matches_explicit_indexing(slice_axis, context_slices):
    case = _case(0)
    volume = np.concatenate([case["image"], case["label"].astype(np.float32)])  # 2 channels: MR and its label
    depth = volume.shape[slice_axis + 1]
    for index in (0, 1, depth // 2, depth - 1):
        out = stack_slice_context(volume, index, slice_axis, context_slices)
        assert out.shape[0] == 2 * (2 * context_slices + 1)
        for c in range(2):
            for offset in range(-context_slices, context_slices + 1):
                source = min(max(index + offset, 0), depth - 1)
                expected = np.take(volume[c], source, axis=slice_axis)
                np.testing.assert_array_equal(out[c * (2 * context_slices + 1) + offset + context_slices], expected)
        torch_out = stack_slice_context(torch.from_numpy(volume), index, slice_axis, context_slices)
        np.testing.assert_array_equal(torch_out.numpy(), out)


def test_edge_slices_replicate():
    image = _case(0)["image"]
    first = stack_slice_context(image, 0, 2, 2)
    last = stack_slice_context(image, image.shape[3] - 1, 2, 2)
    for channel in (0, 1, 2):
        np.testing.assert_array_equal(first[channel], image[0, :, :, 0])
    for channel in (2, 3, 4):
        np.testing.assert_array_equal(last[channel], image[0, :, :, -1])
    np.testing.assert_array_equal(first[3], image[0, :, :, 1])
    assert not np.array_equal(first[3], first[2])


def test_shapes_label_centre_only_and_metadata():
    data = _loaded(0)
    volume_shape = data["image"].shape
    sampler = RandSliceWithContextd(["image", "label"], context_slices=2, num_samples=5, slice_axis=1)
    sampler.set_random_state(3)
    samples = sampler(data)
    assert len(samples) == 5
    for sample in samples:
        index = sample["slice_index"]
        assert sample["image"].shape == (5, volume_shape[1], volume_shape[3])
        assert sample["label"].shape == (1, volume_shape[1], volume_shape[3])
        np.testing.assert_array_equal(sample["label"][0].numpy(), data["label"][0, :, index, :].numpy())
        np.testing.assert_array_equal(sample["image"][2].numpy(), data["image"][0, :, index, :].numpy())
        assert isinstance(sample["image"], MetaTensor) and sample["image"].meta["slice_index"] == index
        # pixel (i, j) of the slice sits where voxel (i, index, j) of the volume sits
        world_3d = data["image"].affine.numpy() @ np.array([4.0, index, 9.0, 1.0])
        world_2d = sample["image"].affine.numpy() @ np.array([4.0, 9.0, 0.0, 1.0])
        np.testing.assert_allclose(world_2d, world_3d, atol=1e-6)


def test_pos_ratio_one_gives_only_foreground_slices_and_zero_gives_background():
    data = _case(2)
    foreground = np.flatnonzero((data["label"][0] > 0).any(axis=(0, 1)))
    assert 0 < foreground.size < data["label"].shape[3]
    positive = RandSliceWithContextd(["image", "label"], num_samples=40, pos_ratio=1.0)
    positive.set_random_state(0)
    indices = [s["slice_index"] for s in positive(data)]
    assert set(indices) <= set(foreground.tolist()) and len(set(indices)) > 3
    assert all(s["label"].max() > 0 for s in positive(data))
    negative = RandSliceWithContextd(["image", "label"], num_samples=40, pos_ratio=0.0)
    negative.set_random_state(0)
    assert not set(s["slice_index"] for s in negative(data)) & set(foreground.tolist())


def test_no_foreground_falls_back_to_all_slices():
    data = _case(0)
    data["label"] = np.zeros_like(data["label"])
    sampler = RandSliceWithContextd(["image", "label"], num_samples=30, pos_ratio=1.0)
    sampler.set_random_state(1)
    indices = {s["slice_index"] for s in sampler(data)}
    assert len(indices) > 10 and max(indices) < data["image"].shape[3]


def test_determinism_with_set_random_state():
    data = _case(1)
    a = RandSliceWithContextd(["image", "label"], num_samples=8).set_random_state(42)
    b = RandSliceWithContextd(["image", "label"], num_samples=8).set_random_state(42)
    c = RandSliceWithContextd(["image", "label"], num_samples=8).set_random_state(43)
    ia, ib, ic = ([s["slice_index"] for s in t(data)] for t in (a, b, c))
    assert ia == ib and ia != ic


def test_centre_only_and_image_keys():
    data = _case(0)
    data["dist"] = data["image"] * 2
    sampler = RandSliceWithContextd(
        ["image", "label", "dist"], centre_only_keys="dist", num_samples=2, context_slices=1
    )
    sample = sampler.set_random_state(0)(data)[0]
    assert sample["image"].shape[0] == 3 and sample["dist"].shape[0] == 1 and sample["label"].shape[0] == 1
    same = RandSliceWithContextd(["image", "label", "dist"], image_keys="image", num_samples=2).set_random_state(0)(
        data
    )[0]
    assert same["dist"].shape[0] == 1 and same["image"].shape[0] == 3
    with pytest.raises(ValueError, match="both image_keys and centre_only_keys"):
        RandSliceWithContextd(["image", "dist"], image_keys=["image", "dist"], centre_only_keys="dist")


def test_deterministic_slices_with_stride():
    data = _case(0)
    depth = data["image"].shape[3]
    out = SliceWithContextd(["image", "label"], context_slices=1, stride=3)(data)
    assert [s["slice_index"] for s in out] == list(range(0, depth, 3))
    np.testing.assert_array_equal(out[1]["image"][1], data["image"][0, :, :, 3])
    np.testing.assert_array_equal(out[1]["image"][0], data["image"][0, :, :, 2])
    assert out[0]["label"].shape == (1, *data["label"].shape[1:3])


def test_inside_compose_dataset_dataloader():
    files = [{"image": str(p), "label": str(SAMPLE / "labelsTr" / p.name)} for p in CASES[:4]]
    transform = Compose(
        [
            LoadImaged(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            RandSliceWithContextd(["image", "label"], context_slices=2, num_samples=3, pos_ratio=1.0),
            ResizeWithPadOrCropd(["image", "label"], (48, 48)),
        ]
    )
    transform.set_random_state(0)
    batch = next(iter(DataLoader(Dataset(files, transform), batch_size=2, num_workers=0)))
    assert batch["image"].shape == (6, 5, 48, 48)
    assert batch["label"].shape == (6, 1, 48, 48)
    assert batch["slice_index"].shape == (6,)
    assert all(batch["label"][i].max() > 0 for i in range(6))
