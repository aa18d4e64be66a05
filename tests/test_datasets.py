"""Datasets in the nnU-Net v2 and Decathlon layouts, their refusals, and the cross-validation folds, on real volumes
(the committed hippocampus sample and ../shared/data/msd_hippocampus)."""

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dataset_builders import SAMPLE, msd_dataset, nnunet_dataset
from monai.transforms import Compose

from monai_unet2.bundle_config import volume_preprocessing
from monai_unet2.data import (
    DatalistError,
    fold_datalist,
    inference_datalist,
    make_splits,
    msd_datalist,
    read_dataset,
    read_splits,
)
from monai_unet2.transforms import SafeLoadImaged

ROOT = Path(__file__).resolve().parents[1]
MSD_HIPPOCAMPUS = ROOT.parent / "shared" / "data" / "msd_hippocampus"
LABELS = {"0": "background", "1": "anterior", "2": "posterior"}


def load(case: dict, channels: int) -> dict:
    """A case through the bundles' loader and volume checks, as training reads it."""
    chain = Compose(
        [
            SafeLoadImaged(["image", "label"], image_only=True, reader="monai_unet2.data.DicomSeriesReader"),
            *volume_preprocessing(label_key="label", labels=LABELS, image_channels=channels),
        ]
    )
    return chain({"image": case["image"], "label": case["label"]})


def test_nnunet_layout_reads_channels_labels_and_test_cases_as_two_channel_volumes(tmp_path):
    dataset = read_dataset(nnunet_dataset(tmp_path / "ds"))
    assert dataset.layout == "nnunet" and dataset.name == "Hippocampus2Channel"
    assert dataset.channel_names == {"0": "T1", "1": "T1_inverted"} and dataset.labels == LABELS
    assert [case["case"] for case in dataset.training] == [
        "hippocampus_004",
        "hippocampus_038",
        "hippocampus_065",
        "hippocampus_105",
        "hippocampus_138",
        "hippocampus_171",
    ]
    first = dataset.training[0]
    assert [os.path.basename(p) for p in first["image"]] == [
        "hippocampus_004_0000.nii.gz",
        "hippocampus_004_0001.nii.gz",
    ]
    assert [case["case"] for case in dataset.test] == ["hippocampus_199", "hippocampus_225"]
    assert all("label" in case for case in dataset.test)
    volume = load(first, channels=2)
    source = np.asarray(nib.load(SAMPLE / "imagesTr" / "hippocampus_004.nii.gz").dataobj, dtype=np.float32)
    assert tuple(volume["image"].shape) == (2, *source.shape)
    np.testing.assert_allclose(volume["image"][0].numpy() + volume["image"][1].numpy(), source.max(), rtol=1e-6)


def test_decathlon_layout_reads_4d_images_channels_last(tmp_path):
    dataset = read_dataset(msd_dataset(tmp_path / "ds"))
    assert dataset.layout == "msd" and dataset.channel_names == {"0": "T1", "1": "T1_inverted"}
    assert dataset.labels == LABELS and len(dataset.training) == 6
    assert isinstance(dataset.training[0]["image"], str) and dataset.training[0]["case"] == "hippocampus_004"
    assert [case["case"] for case in dataset.test] == ["hippocampus_199", "hippocampus_225"]
    volume = load(dataset.training[0], channels=2)
    assert volume["image"].shape[0] == 2 and volume["label"].shape[0] == 1
    with pytest.raises(RuntimeError) as caught:
        load(dataset.training[0], channels=3)
    assert "hippocampus_004.nii.gz: expected 3 channel(s), got 2" in str(caught.value.__cause__)


def test_a_dataset_json_image_list_is_one_file_per_channel(tmp_path):
    root = nnunet_dataset(tmp_path / "ds")
    manifest = {
        "modality": {"0": "T1", "1": "T1_inverted"},
        "labels": LABELS,
        "training": [
            {
                "image": ["./imagesTr/hippocampus_004_0000.nii.gz", "./imagesTr/hippocampus_004_0001.nii.gz"],
                "label": "./labelsTr/hippocampus_004.nii.gz",
            }
        ],
    }
    (root / "dataset.json").write_text(json.dumps(manifest))
    (case,) = read_dataset(root).training
    assert case["case"] == "hippocampus_004" and len(case["image"]) == 2
    assert load(case, channels=2)["image"].shape[0] == 2


@pytest.mark.parametrize(
    "entry, message",
    [
        ("./imagesTr/hippocampus_004.nii.gz", r"training\[0\] is a plain path .* need an image and its label"),
        ({"image": "./imagesTr/hippocampus_004.nii.gz"}, r"training\[0\] .* has no 'label' path"),
        ({"label": "./labelsTr/hippocampus_004.nii.gz"}, r"training\[0\] has no 'image'"),
        ({"image": [], "label": "x"}, r"training\[0\]: 'image' must be a path or a list of paths"),
    ],
)
def test_malformed_dataset_json_entries_are_refused_by_index(tmp_path, entry, message):
    shutil.copytree(SAMPLE, tmp_path / "ds")
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"training": [entry]}))
    with pytest.raises(DatalistError, match=r"dataset\.json: " + message):
        msd_datalist(tmp_path / "ds")


def test_missing_channel_file_extra_channel_regions_and_ignore_labels(tmp_path):
    root = nnunet_dataset(tmp_path / "ds")
    os.remove(root / "imagesTr" / "hippocampus_038_0001.nii.gz")
    with pytest.raises(DatalistError, match=r"imagesTr/hippocampus_038_0001\.nii\.gz: channel file missing: .*"):
        read_dataset(root)
    shutil.copy(root / "imagesTr" / "hippocampus_038_0000.nii.gz", root / "imagesTr" / "hippocampus_038_0001.nii.gz")
    shutil.copy(root / "imagesTr" / "hippocampus_038_0000.nii.gz", root / "imagesTr" / "hippocampus_038_0002.nii.gz")
    with pytest.raises(DatalistError, match=r"hippocampus_038_0002\.nii\.gz: case hippocampus_038 has channel 0002"):
        read_dataset(root)
    os.remove(root / "imagesTr" / "hippocampus_038_0002.nii.gz")
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["labels"] = {"background": 0, "whole": [1, 2], "posterior": 2}  # nnU-Net regions: one class per value
    (root / "dataset.json").write_text(json.dumps(manifest))
    assert read_dataset(root).labels == {"0": "background", "1": "label_1", "2": "posterior"}
    manifest["labels"]["ignore"] = 3
    (root / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DatalistError, match=r"nnU-Net's 'ignore' label"):
        read_dataset(root)


def test_missing_label_empty_dataset_and_symlinks_out_of_the_root(tmp_path):
    root = nnunet_dataset(tmp_path / "ds")
    os.remove(root / "labelsTr" / "hippocampus_065.nii.gz")
    with pytest.raises(DatalistError, match=r"labelsTr/hippocampus_065\.nii\.gz: label file of case hippocampus_065"):
        read_dataset(root)
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    with pytest.raises(DatalistError, match=r"no training cases found"):
        read_dataset(tmp_path / "empty")
    shutil.copytree(SAMPLE, tmp_path / "plain")
    outside = tmp_path / "outside.nii.gz"
    shutil.copy(SAMPLE / "imagesTr" / "hippocampus_004.nii.gz", outside)
    os.remove(tmp_path / "plain" / "imagesTr" / "hippocampus_004.nii.gz")
    os.symlink(outside, tmp_path / "plain" / "imagesTr" / "hippocampus_004.nii.gz")
    with pytest.raises(DatalistError, match=r"resolves to .*outside\.nii\.gz, outside the dataset root"):
        msd_datalist(tmp_path / "plain")
    assert len(msd_datalist(tmp_path / "plain", allow_outside_root=True)) == 12


def test_folds_reproduce_the_every_fifth_case_split_and_a_single_case_trains(tmp_path):
    assert [len(fold_datalist(SAMPLE, split)) for split in ("training", "validation")] == [9, 3]
    assert fold_datalist(SAMPLE, "validation") == msd_datalist(SAMPLE, "validation")
    assert [c["case"] for c in fold_datalist(SAMPLE, "validation", fold=1)] == [
        "hippocampus_038",
        "hippocampus_199",
        "hippocampus_331",
    ]
    assert len(fold_datalist(SAMPLE, "training", fold="all")) == 12
    (tmp_path / "one" / "imagesTr").mkdir(parents=True)
    (tmp_path / "one" / "labelsTr").mkdir()
    for folder in ("imagesTr", "labelsTr"):
        shutil.copy(SAMPLE / folder / "hippocampus_004.nii.gz", tmp_path / "one" / folder)
    assert fold_datalist(tmp_path / "one", "training") == fold_datalist(tmp_path / "one", "validation")
    assert len(fold_datalist(tmp_path / "one", "training")) == 1


def test_recorded_splits_are_used_for_the_dataset_they_list(tmp_path):
    splits = make_splits([f"hippocampus_{n:03d}" for n in (4, 38, 65, 105, 138, 171, 199, 225, 252, 290, 310, 331)])
    splits[0], splits[1] = splits[1], splits[0]  # a recorded split that differs from the rule
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    assert read_splits(tmp_path / "splits.json") == splits
    validation = fold_datalist(SAMPLE, "validation", 0, tmp_path / "splits.json")
    assert (
        [c["case"] for c in validation] == splits[0]["val"] == ["hippocampus_038", "hippocampus_199", "hippocampus_331"]
    )
    with pytest.raises(ValueError, match=r"fold 7 does not exist: the splits have folds 0\.\.4 and 'all'"):
        fold_datalist(SAMPLE, "training", 7, tmp_path / "splits.json")


def test_random_splits_are_seeded_disjoint_and_cover_every_case():
    cases = [f"case_{n:03d}" for n in range(23)]
    folds = make_splits(cases, 5, "random", seed=12345)
    assert folds == make_splits(list(reversed(cases)), 5, "random", seed=12345)
    assert folds != make_splits(cases, 5, "random", seed=1)
    assert sorted(case for fold in folds for case in fold["val"]) == cases
    assert [len(fold["val"]) for fold in folds] == [5, 5, 5, 4, 4]
    assert all(not set(fold["train"]) & set(fold["val"]) for fold in folds)


@pytest.mark.skipif(not MSD_HIPPOCAMPUS.is_dir(), reason="needs ../shared/data/msd_hippocampus")
def test_fold_0_of_the_full_dataset_is_the_shipped_validation_split():
    interleaved = make_splits([case["case"] for case in read_dataset(MSD_HIPPOCAMPUS).training])
    validation = fold_datalist(MSD_HIPPOCAMPUS, "validation", 0)
    assert len(validation) == 40 and validation == msd_datalist(MSD_HIPPOCAMPUS, "validation")
    assert [case["case"] for case in validation] == interleaved[0]["val"]


def test_inference_groups_channel_files_and_reads_dataset_roots(tmp_path):
    root = nnunet_dataset(tmp_path / "ds")
    grouped = inference_datalist(root / "imagesTs", channels=2)
    assert [entry["case"] for entry in grouped] == ["hippocampus_199", "hippocampus_225"]
    assert all(len(entry["image"]) == 2 for entry in grouped)
    assert [entry["case"] for entry in inference_datalist(root, channels=2)] == ["hippocampus_199", "hippocampus_225"]
    assert [entry["case"] for entry in inference_datalist(msd_dataset(tmp_path / "msd"), channels=2)] == [
        "hippocampus_199",
        "hippocampus_225",
    ]
    os.remove(root / "labelsTr" / "hippocampus_004.nii.gz")
    shutil.rmtree(root / "imagesTs")  # a labelled or unlabelled dataset without test images: its training images
    assert len(inference_datalist(root, channels=2)) == 6
    with pytest.raises(DatalistError, match=r"the bundle reads 2 channels, but the images are not named"):
        inference_datalist(SAMPLE / "imagesTr", channels=2)
    os.remove(root / "imagesTr" / "hippocampus_038_0001.nii.gz")
    with pytest.raises(DatalistError, match=r"hippocampus_038_0001\.nii\.gz: channel file missing"):
        inference_datalist(root / "imagesTr", channels=2)
