import json
import os
import shutil
from pathlib import Path

import pytest

from monai_unet2.data import DatalistError, inference_datalist, msd_datalist

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation" / "sample_data"
DICOM_CT = ROOT / "tests" / "data" / "dicom" / "totalseg_ct20" / "ct"


def test_sample_split_is_disjoint_and_reproducible():
    everything = msd_datalist(SAMPLE, split="all")
    training = msd_datalist(SAMPLE, split="training")
    validation = msd_datalist(SAMPLE, split="validation")
    assert len(everything) == 12
    assert [len(training), len(validation)] == [9, 3]

    def names(cases):
        return [os.path.basename(c["image"]) for c in cases]

    assert names(validation) == ["hippocampus_004.nii.gz", "hippocampus_171.nii.gz", "hippocampus_310.nii.gz"]
    assert not set(names(training)) & set(names(validation))
    for case in everything:
        assert os.path.basename(case["image"]) == os.path.basename(case["label"])
        assert "labelsTr" in case["label"]


def test_dataset_json_entries_escaping_the_root_are_refused(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "data")
    manifest = {"training": [{"image": "../outside.nii.gz", "label": "./labelsTr/hippocampus_004.nii.gz"}]}
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DatalistError, match=r"'../outside.nii.gz' resolves to .* outside the dataset root"):
        msd_datalist(tmp_path / "data")


def test_dataset_json_is_used_and_missing_labels_are_named(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "data")
    manifest = {
        "training": [{"image": "./imagesTr/hippocampus_004.nii.gz", "label": "./labelsTr/hippocampus_004.nii.gz"}]
    }
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(manifest))
    assert len(msd_datalist(tmp_path / "data")) == 1
    os.remove(tmp_path / "data" / "labelsTr" / "hippocampus_004.nii.gz")
    with pytest.raises(
        DatalistError, match=r"hippocampus_004\.nii\.gz: label file listed for case hippocampus_004 is missing"
    ):
        msd_datalist(tmp_path / "data")


def test_inference_datalist_finds_nifti_files_and_dicom_series_folders(tmp_path):
    shutil.copy(SAMPLE / "imagesTr" / "hippocampus_004.nii.gz", tmp_path)
    shutil.copytree(DICOM_CT, tmp_path / "ct_series")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    found = inference_datalist(tmp_path)
    assert [os.path.basename(entry["image"]) for entry in found] == ["ct_series", "hippocampus_004.nii.gz"]
    with pytest.raises(DatalistError, match="no NIfTI files"):
        inference_datalist(tmp_path / "empty")


def test_inference_datalist_takes_one_image_file(tmp_path):
    """A file given as ``--dataset_dir`` is one case (the bundle READMEs promise it), named without its ending."""
    image = SAMPLE / "imagesTr" / "hippocampus_004.nii.gz"
    assert inference_datalist(image) == [{"image": str(image.resolve()), "case": "hippocampus_004"}]
    with pytest.raises(DatalistError, match="reads 2 channels, one file per channel"):
        inference_datalist(image, channels=2)
    with pytest.raises(DatalistError, match="does not exist"):
        inference_datalist(tmp_path / "missing")
