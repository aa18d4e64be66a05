"""Multi-view 2.5D fusion: the views a bundle's plans state, the inferer that averages them, and the configs that
train one view and infer all of them, on a committed sample volume."""

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from dataset_builders import SAMPLE
from monai.bundle import ConfigParser

from monai_unet2.bundle_config import read_plans, view_models_dir, view_plan
from monai_unet2.inferers import (
    FoldEnsembleInferer,
    MultiViewInferer,
    SlidingWindowSliceInferer,
    check_views,
    views_that_fit,
)
from monai_unet2.networks import UNet

BUNDLE = SAMPLE.parent
VIEWS = {"coronal": {"slice_axis": 1, "roi_size": [48, 48]}, "sagittal": {"slice_axis": 0, "roi_size": [64, 48]}}


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    image = np.asarray(nib.load(SAMPLE / "imagesTr" / "hippocampus_004.nii.gz").dataobj, dtype=np.float32)
    image = (image - image.mean()) / image.std()
    return torch.from_numpy(image)[None, None]


def whole_slices(**kwargs) -> SlidingWindowSliceInferer:
    settings = {"roi_size": None, "min_roi_size": (48, 64), "size_divisible_by": 16, "sw_batch_size": 16}
    settings |= {"slice_axis": 2, "context_slices": 2, "overlap": 0.5, "mode": "gaussian"}
    return SlidingWindowSliceInferer(**settings | kwargs)


def small_unet(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(spatial_dims=2, in_channels=5, out_channels=3, features=8).eval()


def save(network: torch.nn.Module, path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(network.state_dict(), path)
    return str(path)


def test_with_view_infers_like_an_inferer_built_for_that_view(volume):
    primary = whole_slices()
    coronal = primary.with_view(1, [48, 48])
    network = small_unet(0)
    with torch.no_grad():
        expected = whole_slices(slice_axis=1, min_roi_size=(48, 48))(volume, network)
        assert torch.equal(coronal(volume, network), expected)
    assert (primary.slice_axes, primary.min_roi_size) == ((2,), (48, 64))  # the original is unchanged
    fixed = SlidingWindowSliceInferer(roi_size=(48, 64), slice_axis=2, context_slices=2).with_view(0, (64, 48))
    assert (fixed.roi_size, fixed.min_roi_size, fixed.slice_axes) == ([64, 48], None, (0,))
    with pytest.raises(ValueError, match="slice_axis must be 0, 1 or 2"):
        primary.with_view(3, [48, 48])


def test_views_average_the_probabilities_of_every_orientation(volume, tmp_path):
    networks = {"primary": small_unet(0), "coronal": small_unet(1), "sagittal": small_unet(2)}
    save(networks["primary"], tmp_path / "model.pt")
    for name in VIEWS:
        save(networks[name], tmp_path / name / "model.pt")
    fused = MultiViewInferer(FoldEnsembleInferer(whole_slices(), models_dir=tmp_path), VIEWS, models_dir=tmp_path)
    with torch.no_grad():
        expected = torch.softmax(whole_slices()(volume, networks["primary"]), dim=1)
        expected += torch.softmax(whole_slices(slice_axis=1, min_roi_size=(48, 48))(volume, networks["coronal"]), 1)
        expected += torch.softmax(whole_slices(slice_axis=0, min_roi_size=(64, 48))(volume, networks["sagittal"]), 1)
        expected /= 3
        output = fused(volume, small_unet(9))
    torch.testing.assert_close(torch.softmax(output, dim=1), expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(output.argmax(1), expected.argmax(1))
    assert output.shape == (1, 3, *volume.shape[2:])


def test_no_view_gives_the_fold_ensembles_output_bit_for_bit(volume, tmp_path):
    save(small_unet(0), tmp_path / "model.pt")
    ensemble = FoldEnsembleInferer(whole_slices(), models_dir=tmp_path)
    with torch.no_grad():
        assert torch.equal(MultiViewInferer(ensemble, {})(volume, small_unet(5)), ensemble(volume, small_unet(5)))


@pytest.mark.parametrize(
    "shape, fitting, unfit",
    [
        ((35, 50, 24), ["coronal", "sagittal"], {}),
        ((35, 50, 23), [], {"coronal": "35 x 23 voxels", "sagittal": "50 x 23 voxels"}),
        ((23, 50, 40), ["sagittal"], {"coronal": "23 x 40 voxels in its plane, under half its 48 x 48 training"}),
        ((36, 31, 1), [], {"coronal": "36 x 1 voxels", "sagittal": "31 x 1 voxels"}),
    ],
)
def test_a_view_needs_half_its_training_window_in_its_plane(shape, fitting, unfit):
    names, reasons = views_that_fit(check_views(VIEWS), shape)
    assert names == fitting
    assert list(reasons) == list(unfit)
    for name, start in unfit.items():
        assert reasons[name].startswith(start)


def test_a_slab_too_thin_for_the_views_is_the_primary_alone_with_a_warning(volume, tmp_path, caplog):
    for index, name in enumerate(["", *VIEWS]):
        save(small_unet(index), tmp_path / name / "model.pt")
    slab = volume[..., 12:20]
    ensemble = FoldEnsembleInferer(whole_slices(), models_dir=tmp_path)
    fused = MultiViewInferer(ensemble, VIEWS, models_dir=tmp_path)
    with torch.no_grad(), caplog.at_level("WARNING", logger="monai_unet2.inferers.multi_view"):
        assert torch.equal(fused(slab, small_unet(5)), ensemble(slab, small_unet(5)))
    assert [record.getMessage().split(" (")[0] for record in caplog.records if record.name.endswith("multi_view")] == [
        "volume: view 'coronal' left out of the fusion",
        "volume: view 'sagittal' left out of the fusion",
    ]


def test_a_view_without_a_model_is_refused_by_its_folder(volume, tmp_path):
    save(small_unet(0), tmp_path / "model.pt")
    save(small_unet(1), tmp_path / "coronal" / "model.pt")
    fused = MultiViewInferer(FoldEnsembleInferer(whole_slices(), models_dir=tmp_path), VIEWS, models_dir=tmp_path)
    with (
        pytest.raises(FileNotFoundError, match=r"view .sagittal.: .*sagittal: no trained model.*--view sagittal"),
        torch.no_grad(),
    ):
        fused(volume, small_unet(5))


@pytest.mark.parametrize(
    ("views", "message"),
    [
        ({"coronal": {"slice_axis": 3, "roi_size": [48, 48]}}, r"views\.coronal needs slice_axis"),
        ({"coronal": {"slice_axis": 1}}, r"views\.coronal needs slice_axis"),
        ({"coronal": {"slice_axis": 1, "roi_size": [48]}}, r"views\.coronal needs slice_axis"),
        ({"fold_0": VIEWS["coronal"]}, "must be a plain folder name"),
        ({"a/b": VIEWS["coronal"]}, "must be a plain folder name"),
    ],
)
def test_malformed_views_are_refused_by_name(views, message):
    with pytest.raises(ValueError, match=message):
        check_views(views)


def bundle_with_views(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    plans = json.loads((bundle / "configs" / "plans.json").read_text())
    plans["views"] = VIEWS
    (bundle / "configs" / "plans.json").write_text(json.dumps(plans))
    return bundle


def test_a_view_is_chosen_by_name_from_the_plans(tmp_path):
    plans = read_plans(bundle_with_views(tmp_path))
    assert view_plan(plans) == {"slice_axis": plans["slice_axis"], "roi_size": plans["roi_size"]}
    assert view_plan(plans, "sagittal") == VIEWS["sagittal"]
    with pytest.raises(ValueError, match=r"--view axial: .*plans\.json has no such view \(views: coronal, sagittal\)"):
        view_plan(plans, "axial")
    assert view_models_dir("b", None) == os.path.join("b", "models")
    assert view_models_dir("b", "coronal") == os.path.join("b", "models", "coronal")


def test_training_a_view_sets_its_axis_window_folder_and_registered_name(tmp_path):
    bundle = bundle_with_views(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "view": "coronal"})
    assert parser.get_parsed_content("slice_axis") == 1
    assert parser.get_parsed_content("roi_size") == [48, 48]
    assert parser.get_parsed_content("ckpt_dir") == str(bundle / "models" / "coronal")
    assert parser.get_parsed_content("slice_inferer").slice_axes == (1,)
    assert parser.get_parsed_content("registered_model_name") == "hippocampus_unet25d_segmentation-coronal"
    parser.update({"view": None})
    assert parser.get_parsed_content("slice_axis", lazy=False) == 2
    assert parser.get_parsed_content("ckpt_dir", lazy=False) == str(bundle / "models")


def test_inference_fuses_the_plans_views_unless_one_weights_file_is_given(tmp_path):
    bundle = bundle_with_views(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle)})
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, MultiViewInferer) and list(inferer.members) == ["coronal", "sagittal"]
    coronal = inferer.members["coronal"]
    assert coronal.models_dir == str(bundle / "models" / "coronal")
    assert (coronal.inferer.slice_axes, coronal.inferer.min_roi_size, coronal.inferer.amp) == ((1,), [48, 48], "auto")
    parser.update({"ckpt_path": str(bundle / "elsewhere.pt")})
    assert parser.get_parsed_content("views", lazy=False) == {}
