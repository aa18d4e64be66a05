"""signed_distance_map / SignedDistanceMapd against an independent scipy computation on the hippocampus sample."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from monai_unet2.transforms import SignedDistanceMapd, signed_distance_map

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "bundles", "hippocampus_unet25d_segmentation", "sample_data")
LABELS = sorted(glob.glob(os.path.join(SAMPLE, "labelsTr", "*.nii.gz")))


def kervadec_reference(mask: np.ndarray) -> np.ndarray:
    """The published formula at unit spacing: d_out outside, -(d_in - 1) inside, 0 for empty / full masks."""
    mask = mask.astype(bool)
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    return distance_transform_edt(~mask) * ~mask - (distance_transform_edt(mask) - 1) * mask


def load_label(path: str):
    return LoadImaged(keys="label", image_only=True)({"label": path})["label"]


@pytest.fixture(scope="module")
def volumes() -> list[np.ndarray]:
    return [np.asarray(load_label(path)).astype(np.int64) for path in LABELS[:6]]


def test_matches_kervadec_formula_on_real_slices_and_volumes(volumes):
    checked = 0
    for label in volumes:
        for class_index in (1, 2):
            mask = label == class_index
            np.testing.assert_allclose(signed_distance_map(mask), kervadec_reference(mask), atol=1e-5)
            for index in range(0, mask.shape[2], 3):
                plane = mask[:, :, index]
                np.testing.assert_allclose(signed_distance_map(plane), kervadec_reference(plane), atol=1e-5)
                checked += int(plane.any())
    assert checked > 50


def test_sign_and_zero_on_boundary(volumes):
    class_one = volumes[0] == 1
    mask = class_one[:, :, int(np.argmax(class_one.sum(axis=(0, 1))))]
    assert mask.sum() > 20
    phi = signed_distance_map(mask)
    boundary = mask & ~binary_erosion(mask, generate_binary_structure(2, 1), border_value=1)
    interior = mask & ~boundary
    assert phi.dtype == np.float32
    assert np.all(phi[boundary] == 0)
    assert np.all(phi[interior] < 0) and interior.any()
    assert np.all(phi[~mask] >= 1)


def test_empty_and_full_masks_give_zero():
    assert not signed_distance_map(np.zeros((20, 30), bool)).any()
    assert not signed_distance_map(np.ones((20, 30), bool)).any()
    assert not signed_distance_map(np.ones((6, 7, 8), bool), spacing=(1, 1, 3)).any()


def test_spacing_scales_distances():
    half_plane = np.zeros((10, 12), bool)
    half_plane[:, :5] = True
    unit = signed_distance_map(half_plane)
    np.testing.assert_array_equal(unit[0], [-4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_allclose(signed_distance_map(half_plane, spacing=(1, 2)), 2 * unit)
    np.testing.assert_allclose(signed_distance_map(half_plane.T, spacing=(2, 1)), 2 * unit.T)
    np.testing.assert_allclose(signed_distance_map(half_plane.T, spacing=(1, 2)), unit.T)


def test_sub_millimetre_spacing_keeps_the_sign(volumes):
    foreground = volumes[1] > 0
    mask = foreground[:, int(np.argmax(foreground.sum(axis=(0, 2)))), :]
    unit = signed_distance_map(mask)
    np.testing.assert_allclose(signed_distance_map(mask, spacing=(0.5, 0.5)), 0.5 * unit, atol=1e-5)
    np.testing.assert_allclose(signed_distance_map(mask, spacing=(3.0, 3.0)), 3.0 * unit, atol=1e-4)
    # the isotropic shortcut and the general (anisotropic) path agree
    np.testing.assert_allclose(signed_distance_map(mask, spacing=(3.0, 3.0 + 1e-7)), 3.0 * unit, atol=1e-4)
    # the literal "-(d - 1)" with sampling=0.5 would make the boundary voxels positive inside the object
    literal = -(distance_transform_edt(mask, sampling=(0.5, 0.5)) - 1)
    assert (literal[mask] > 0).any() and (signed_distance_map(mask, (0.5, 0.5))[mask] <= 0).all()


def test_transform_class_index_with_spacing_from_affine():
    label = load_label(LABELS[2])[None]
    affine = label.affine.clone()
    affine[:3, :3] = affine[:3, :3] @ torch.diag(torch.tensor([1.0, 1.0, 2.5], dtype=affine.dtype))
    label.affine = affine
    out = SignedDistanceMapd(keys="label", num_classes=3)({"label": label})
    maps = out["distance_map"]
    assert maps.shape == (2, *label.shape[1:]) and maps.dtype == torch.float32
    assert torch.equal(maps.affine, label.affine)
    values = np.asarray(label[0])
    for channel, class_index in enumerate((1, 2)):
        mask = values == class_index
        expected = distance_transform_edt(~mask, sampling=(1, 1, 2.5)) * ~mask
        np.testing.assert_allclose(np.asarray(maps[channel])[~mask], expected[~mask], atol=1e-4)
        assert (np.asarray(maps[channel])[mask] <= 0).all()
    with_background = SignedDistanceMapd(num_classes=3, include_background=True, spacing=(1, 1, 1))({"label": label})
    background_map = np.asarray(with_background["distance_map"][0])
    np.testing.assert_allclose(background_map, kervadec_reference(values == 0), atol=1e-5)


def test_transform_one_hot_and_binary_layouts(volumes):
    values = volumes[3]
    one_hot = np.stack([values == c for c in range(3)]).astype(np.float32)
    maps = SignedDistanceMapd(spacing=(1, 1, 1))({"label": one_hot})["distance_map"]
    assert maps.shape[0] == 2
    np.testing.assert_allclose(maps[1].numpy(), kervadec_reference(values == 2), atol=1e-5)
    binary = (values > 0).astype(np.uint8)[None]
    maps = SignedDistanceMapd()({"label": binary})["distance_map"]
    np.testing.assert_allclose(maps[0].numpy(), kervadec_reference(values > 0), atol=1e-5)


def test_bad_labels_name_the_key_and_problem():
    with pytest.raises(ValueError, match=r"label 'seg' has values \[0, 1, 5\]"):
        SignedDistanceMapd(keys="seg", num_classes=3)({"seg": np.array([[[0, 1], [5, 0]]])})
    with pytest.raises(ValueError, match="pass num_classes"):
        SignedDistanceMapd(keys="seg")({"seg": np.array([[[0, 1], [2, 0]]])})
    with pytest.raises(ValueError, match="spacing"):
        signed_distance_map(np.ones((3, 3)), spacing=(1, 1, 1))


def test_slice_axis_maps_commute_with_slicing_and_differ_from_3d(volumes):
    """The property the 2.5D pipeline relies on: per-slice maps computed on the volume (cacheable, before the
    random slice sampler) equal the maps of the sampled 2D slices; a 3D map does not."""
    values = volumes[4]
    label = torch.from_numpy(values)[None]
    per_slice = SignedDistanceMapd(num_classes=3, slice_axis=1, spacing=(1, 1, 1))({"label": label})["distance_map"]
    volumetric = SignedDistanceMapd(num_classes=3, spacing=(1, 1, 1))({"label": label})["distance_map"]
    differing = 0
    for index in range(values.shape[1]):
        for channel, class_index in enumerate((1, 2)):
            plane = values[:, index, :] == class_index
            expected = signed_distance_map(plane)
            np.testing.assert_allclose(per_slice[channel, :, index, :].numpy(), expected, atol=1e-5)
            differing += int(not np.allclose(volumetric[channel, :, index, :].numpy(), expected, atol=1e-3))
    assert differing > values.shape[1] // 2
    # an empty slice next to the object: zero in 2D (region terms carry it), positive in 3D (distance to a neighbour)
    occupied = np.flatnonzero((values == 1).any(axis=(0, 2)))
    empty_neighbour = occupied[0] - 1
    assert not per_slice[0, :, empty_neighbour, :].any()
    assert volumetric[0, :, empty_neighbour, :].min() > 0


def test_cached_pipeline_from_nifti_is_deterministic():
    pipeline = Compose(
        [
            LoadImaged(keys="label", image_only=True),
            EnsureChannelFirstd(keys="label"),
            SignedDistanceMapd(num_classes=3),
        ]
    )
    data = [{"label": path} for path in LABELS[:2]]
    cached = CacheDataset(data, pipeline, progress=False)
    for index in range(2):
        again = pipeline(data[index])["distance_map"]
        assert torch.equal(cached[index]["distance_map"].as_tensor(), again.as_tensor())
        assert cached[index]["distance_map"].shape[0] == 2
