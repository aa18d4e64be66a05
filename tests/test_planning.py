"""monai_unet2.planning: decisions on measured facts, the fingerprint of real multi-channel datasets and its refusals,
overrides, and the shipped hippocampus bundle as the planner writes it for ../shared/data/msd_hippocampus."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dataset_builders import msd_dataset, nnunet_dataset

from monai_unet2.data import DatalistError, read_dataset
from monai_unet2.planning import (
    TEMPLATE_FILES,
    BundleExistsError,
    apply_overrides,
    decisions,
    fingerprint_dataset,
    parse_overrides,
    plan_dataset,
    write_bundle,
)
from monai_unet2.planning.timing import budget_epochs

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
MSD_HIPPOCAMPUS = ROOT.parent / "shared" / "data" / "msd_hippocampus"
LABELS = {"0": "background", "1": "anterior", "2": "posterior"}
CHANNELS = {"0": "T1", "1": "T1_inverted"}
#: the plans.json keys that depend on the machine the plan was made on (measured step time) or on where the data is
MACHINE_DEPENDENT = ("dataset_dir", "measured")


def test_target_spacing_follows_nnunet_for_anisotropic_data():
    spacings = np.array([[0.7, 0.7, 5.0]] * 8 + [[0.7, 0.7, 2.5]] * 2)
    shapes = np.array([[512, 512, 40]] * 10)
    spacing, reason = decisions.target_spacing(spacings, shapes)
    assert spacing == [0.7, 0.7, 2.5] and "10th percentile" in reason
    isotropic, reason = decisions.target_spacing(np.array([[1.0, 1.0, 1.0]] * 3), np.array([[40, 50, 35]] * 3))
    assert isotropic == [1.0, 1.0, 1.0] and "every case is 1 x 1 x 1 mm" in reason
    assert decisions.slice_axis([0.7, 0.7, 2.5])[0] == 2
    assert decisions.slice_axis([3.0, 0.8, 0.8])[0] == 0  # sagittal acquisition: slices across the coarse axis
    assert decisions.slice_axis([0.8, 0.8, 0.9])[0] == 2


def test_window_context_and_batch():
    shapes = np.array([[43.0, 59.0, 30.0], [35.0, 50.0, 36.0]])
    assert decisions.roi_size(shapes, 2)[0] == [48, 64]
    assert decisions.roi_size(np.array([[512.0, 400.0, 30.0]]), 2)[0] == [256, 256]
    assert decisions.context_slices([1.0, 1.0, 1.0], 2, depth=35)[0] == 2
    assert decisions.context_slices([0.7, 0.7, 5.0], 2, depth=30)[0] == 1
    assert decisions.context_slices([1.0, 1.0, 1.0], 2, depth=1)[0] == 0
    assert decisions.context_slices([1.0, 1.0, 1.0], 2, depth=3)[0] == 1
    assert decisions.batch_size([48, 64], 160, gpu=False)[:2] == (4, 8)
    assert decisions.batch_size([256, 256], 160, gpu=False)[:2] == (1, 2)
    assert decisions.batch_size([48, 64], 1, gpu=False)[:2] == (1, 8)


def test_normalisation_per_modality():
    ct_stats = {"percentile_00_5": -120.0, "percentile_99_5": 240.0, "mean": 60.0, "std": 50.0}
    channels = {"0": {"name": "CT", "modality": "CT", "foreground_intensity": ct_stats}}
    assert decisions.normalization(channels, 1.0)[0] == {
        "name": "ct",
        "lower": [-120.0],
        "upper": [240.0],
        "mean": [60.0],
        "std": [50.0],
    }
    mr = {"name": "T2", "modality": "MR", "foreground_intensity": ct_stats}
    assert decisions.normalization({"0": mr}, 0.5)[0] == {"name": "zscore", "channel_wise": True, "nonzero": True}
    mixed, reason = decisions.normalization({**channels, "1": mr}, 0.9)
    assert mixed == {
        "name": "per_channel",
        "channels": [
            {"name": "ct", "lower": -120.0, "upper": 240.0, "mean": 60.0, "std": 50.0},
            {"name": "zscore", "nonzero": False},
        ],
    }
    assert "channel 0 (CT, CT): clip" in reason and "channel 1 (T2, MR): z-score per volume" in reason


def test_budget_fills_the_time_with_fixed_length_epochs():
    budget, reasons = budget_epochs(60, step_seconds=2.0, validation_seconds=20.0, iterations_per_pass=40)
    assert budget == {"max_epochs": 36, "epoch_length": 40, "val_interval": 1}  # 36 * (80 s + 20 s) <= 3600 s
    short, reasons = budget_epochs(5, step_seconds=2.0, validation_seconds=10.0, iterations_per_pass=40)
    assert short["epoch_length"] == 10 and short["max_epochs"] == 10 and "shortened" in reasons["epoch_length"]
    slow_validation, _ = budget_epochs(60, step_seconds=1.0, validation_seconds=100.0, iterations_per_pass=40)
    assert slow_validation["val_interval"] == 5
    fixed, _ = budget_epochs(5, 2.0, 10.0, 40, fixed={"max_epochs": 30})
    assert fixed["epoch_length"] == 40


def test_overrides_are_parsed_applied_and_recorded():
    overrides = parse_overrides(["max_epochs=30", "network.features=16", "orientation=LPS", "spacing=[1, 1, 3]"])
    assert overrides == {"max_epochs": 30, "network.features": 16, "orientation": "LPS", "spacing": [1, 1, 3]}
    plans = {"max_epochs": 12, "network": {"features": 32}, "reasons": {"max_epochs": "the budget"}}
    applied = apply_overrides(plans, {"max_epochs": 30, "network.features": 16})
    assert applied["max_epochs"] == 30 and applied["network"] == {"features": 16}
    assert applied["reasons"]["max_epochs"] == "set by --override max_epochs=30; planned: 12, because the budget"
    assert applied["overrides"] == {"max_epochs": 30, "network.features": 16} and plans["max_epochs"] == 12
    with pytest.raises(ValueError, match="--override learning: not a planning decision"):
        parse_overrides(["learning=1"])
    with pytest.raises(ValueError, match="expected key=value"):
        parse_overrides(["max_epochs"])


def test_fingerprint_of_two_channel_datasets_in_both_layouts(tmp_path):
    for build in (nnunet_dataset, msd_dataset):
        dataset = read_dataset(build(tmp_path / build.__name__))
        fingerprint = fingerprint_dataset(dataset, LABELS, CHANNELS)
        assert fingerprint["cases"] == 6 and fingerprint["test_cases"] == 2 and fingerprint["orientation"] == "RAS"
        assert fingerprint["spacing"]["median"] == [1.0, 1.0, 1.0]
        assert [c["modality"] for c in fingerprint["channels"].values()] == ["MR", "MR"]
        first, inverted = (c["foreground_intensity"] for c in fingerprint["channels"].values())
        assert first["mean"] != inverted["mean"]
        fractions = [label["voxel_fraction"] for label in fingerprint["labels"].values()]
        assert sum(fractions) == pytest.approx(1.0, abs=1e-5) and 0.01 < fractions[1] < 0.05


def test_fingerprint_refuses_undeclared_labels_channel_counts_and_grids(tmp_path):
    root = nnunet_dataset(tmp_path / "nn")
    label_path = root / "labelsTr" / "hippocampus_038.nii.gz"
    label = nib.load(label_path)
    data = np.asarray(label.dataobj).copy()
    data[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(data, label.affine), label_path)
    with pytest.raises(DatalistError, match=r"hippocampus_038\.nii\.gz: label values 3 are not in dataset\.json"):
        fingerprint_dataset(read_dataset(root), LABELS, CHANNELS)
    nib.save(nib.Nifti1Image(data.clip(0, 2), label.affine @ np.diag([1.0, 1.0, 1.5, 1.0])), label_path)
    with pytest.raises(DatalistError, match=r"hippocampus_038\.nii\.gz and .*hippocampus_038_0000\.nii\.gz: image and"):
        fingerprint_dataset(read_dataset(root), LABELS, CHANNELS)
    msd = msd_dataset(tmp_path / "msd")
    image = nib.load(msd / "imagesTr" / "hippocampus_065.nii.gz")
    three = np.concatenate([np.asarray(image.dataobj)] * 2, axis=-1)[..., :3]
    nib.save(nib.Nifti1Image(three, image.affine), msd / "imagesTr" / "hippocampus_065.nii.gz")
    with pytest.raises(DatalistError, match=r"hippocampus_065\.nii\.gz: case hippocampus_065 has 3 channel\(s\)"):
        fingerprint_dataset(read_dataset(msd), LABELS, CHANNELS)


def test_a_bundle_is_written_once_and_a_hand_written_readme_is_kept(tmp_path):
    plan = plan_dataset(nnunet_dataset(tmp_path / "nn"), step_seconds=0.5, num_folds=3)
    assert [len(fold["val"]) for fold in plan.splits] == [2, 2, 2]
    written = write_bundle(plan, tmp_path / "my_bundle")
    configs = tmp_path / "my_bundle" / "configs"
    metadata = json.loads((configs / "metadata.json").read_text())
    assert metadata["name"] == "my_bundle"
    assert metadata["network_data_format"]["inputs"]["image"]["channel_def"] == CHANNELS
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == LABELS
    assert "| `context_slices` | `2` |" in written["readme"].read_text()
    with pytest.raises(BundleExistsError, match="pass --overwrite"):
        write_bundle(plan, tmp_path / "my_bundle")
    (tmp_path / "my_bundle" / "docs" / "README.md").write_text("# my notes\n")
    written = write_bundle(plan, tmp_path / "my_bundle", overwrite=True)
    assert (
        written["readme"].name == "plan.md"
        and (tmp_path / "my_bundle" / "docs" / "README.md").read_text() == "# my notes\n"
    )


def test_extra_views_only_when_asked_and_only_on_isotropic_data():
    shapes = np.array([[35, 50, 35], [43, 59, 47]])
    views, reason = decisions.views([1.0, 1.0, 1.0], shapes, 2, requested=True)
    assert views == {
        "coronal": {"slice_axis": 1, "roi_size": [48, 48]},
        "sagittal": {"slice_axis": 0, "roi_size": [64, 48]},
    }
    assert "--view <name>" in reason
    assert decisions.views([1.0, 1.0, 1.0], shapes, 2, requested=False)[0] == {}
    thick, reason = decisions.views([0.7, 0.7, 2.5], shapes, 2, requested=True)
    assert thick == {} and "anisotropic" in reason
    assert set(decisions.views([1.0, 1.0, 1.0], shapes, 0, requested=True)[0]) == {"coronal", "axial"}


@pytest.mark.skipif(not MSD_HIPPOCAMPUS.is_dir(), reason="needs ../shared/data/msd_hippocampus")
def test_the_shipped_hippocampus_configs_are_what_plan_writes(tmp_path):
    """The documented command (bundle README) on the 200 development cases reproduces the shipped configs: the
    pipeline configs byte for byte, every planning decision, the folds and the labels; the deltas are the data
    folder (the shipped bundle trains on its committed sample by default), the measured step time, and the prose
    of metadata.json."""
    plan = plan_dataset(
        MSD_HIPPOCAMPUS,
        overrides={"max_epochs": 30},
        labels={"1": "anterior", "2": "posterior"},
        channel_names={"0": "MRI"},
        step_seconds=2.2,
        views=True,
    )
    write_bundle(plan, tmp_path / SHIPPED.name)
    planned, shipped = tmp_path / SHIPPED.name / "configs", SHIPPED / "configs"
    for name in TEMPLATE_FILES:
        assert (planned / name).read_text() == (shipped / name).read_text(), name
    assert json.loads((planned / "splits.json").read_text()) == json.loads((shipped / "splits.json").read_text())
    planned_plans, shipped_plans = (json.loads((folder / "plans.json").read_text()) for folder in (planned, shipped))
    for plans in (planned_plans, shipped_plans):
        for key in MACHINE_DEPENDENT:
            plans.pop(key)
        for key in ("dataset_dir", "max_epochs", "val_interval"):  # their reasons quote the data path / step time
            plans["reasons"].pop(key)
    assert planned_plans == shipped_plans
    planned_meta, shipped_meta = (json.loads((f / "metadata.json").read_text()) for f in (planned, shipped))
    # hand-written on the shipped bundle: the body part the modality guard checks (and the prose, the SEG coding)
    shipped_meta["network_data_format"]["inputs"]["image"].pop("body_part_examined")
    assert planned_meta["network_data_format"] == shipped_meta["network_data_format"]
    assert planned_meta["name"] == shipped_meta["name"]


def test_a_dataset_without_label_names_asks_for_them(tmp_path):
    shutil.copytree(SHIPPED / "sample_data", tmp_path / "plain")
    with pytest.raises(DatalistError, match=r"does not name its labels .* pass --labels"):
        plan_dataset(tmp_path / "plain", step_seconds=0.5)


def test_a_single_dicom_ct_case_is_planned_with_ct_normalisation_and_trains(tmp_path):
    """A DICOM series folder as the image (the committed TotalSegmentator CT), a label made on its grid (body:
    above -300 HU), no dataset.json: one case, CT intensities recognised, folds that still train."""
    from monai.transforms import LoadImage

    from monai_unet2.data import DicomSeriesReader, fold_datalist

    ct = ROOT / "tests" / "data" / "dicom" / "totalseg_ct20" / "ct"
    shutil.copytree(ct, tmp_path / "ds" / "imagesTr" / "patient_01")
    volume = LoadImage(reader=DicomSeriesReader(), image_only=True)(str(ct))
    (tmp_path / "ds" / "labelsTr").mkdir()
    body = (np.asarray(volume) > -300).astype(np.uint8)
    nib.save(nib.Nifti1Image(body, np.asarray(volume.affine)), tmp_path / "ds" / "labelsTr" / "patient_01.nii.gz")
    plan = plan_dataset(tmp_path / "ds", labels={"1": "body"}, step_seconds=0.5)
    fingerprint = plan.plans["fingerprint"]
    assert fingerprint["cases"] == 1 and fingerprint["channels"]["0"]["modality"] == "CT"
    assert fingerprint["channels"]["0"]["modality_from"].startswith("intensities")
    normalization = plan.plans["normalization"]
    assert normalization["name"] == "ct" and normalization["lower"][0] >= -300 and normalization["upper"][0] > 0
    assert plan.plans["slice_axis"] == 2 and plan.plans["spacing"][2] == pytest.approx(2.0, abs=0.01)
    assert plan.plans["roi_size"] == [256, 256] and plan.splits == [{"train": ["patient_01"], "val": ["patient_01"]}]
    assert fold_datalist(tmp_path / "ds", "training") == fold_datalist(tmp_path / "ds", "validation")


def test_the_command_line_refuses_a_bad_dataset_in_one_line(tmp_path, capsys):
    from monai_unet2.__main__ import main

    assert main(["plan", "--dataset_dir", str(tmp_path / "missing"), "--bundle_dir", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip() == f"plan: dataset folder {tmp_path / 'missing'} does not exist"
    assert main(["plan", "--dataset_dir", str(tmp_path), "--bundle_dir", str(tmp_path / "b"), "--override", "x=1"]) == 2
    assert "--override x: not a planning decision" in capsys.readouterr().err
    assert main([]) == 2 and "plan" in capsys.readouterr().out
