"""What our DICOM SEGs say about their content, checked with the tools a hospital integration engineer uses.

The SEGs are written by ``SaveSegmentationd`` with the hippocampus bundle's own ``seg_description`` on the committed
CT series, then read back by ``dciodvfy`` (dicom3tools: 0 errors), dcmqi's ``segimage2itkimage`` (what 3D Slicer's
QuantitativeReporting uses: voxel for voxel on the CT grid, codes, colours and descriptions as the bundle's
metadata.json states them) and highdicom. ``scripts/setup_dicom_tools.sh`` installs both tools.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, LoadImaged

from monai_unet2.data import DicomSeriesReader, SegDescription, build_dicom_seg
from monai_unet2.data.seg_description import clean_decimal, derive_series_number, standard_coding
from monai_unet2.tracking import seg_description
from monai_unet2.transforms import SaveSegmentationd

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
CT20 = ROOT / "tests" / "data" / "dicom" / "totalseg_ct20" / "ct"
CT3 = ROOT / "tests" / "data" / "dicom" / "dcmqi_ct3slice" / "ct"
SETUP = "scripts/setup_dicom_tools.sh"


def _tool(name: str) -> str:
    for candidate in (ROOT / ".venv" / "bin" / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(f"{name} is not installed: run {SETUP}")


def _metadata() -> dict:
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text())


def _write_seg(folder: Path, output: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    """Two labels on the CT grid (bone; a box over two slices), written as the hippocampus bundle's SEG."""
    data = EnsureChannelFirstd("image")(LoadImaged("image", reader=DicomSeriesReader())({"image": str(folder)}))
    hounsfield = data["image"][0].numpy()
    labels = np.zeros(hounsfield.shape, dtype=np.uint8)
    labels[hounsfield > 200] = 1
    labels[100:180, 150:260, 1:3] = 2
    data["pred"] = MetaTensor(torch.as_tensor(labels[None]), meta=copy.deepcopy(data["image"].meta))
    description = seg_description(BUNDLE, BUNDLE / "models" / "model.pt")
    names = {"0": "background", "1": "anterior", "2": "posterior"}
    SaveSegmentationd("pred", output, output_format="dicom_seg", label_names=names, seg_description=description)(data)
    return labels, data["image"].affine.numpy(), output / "ct_seg.dcm"


@pytest.fixture(scope="module")
def ct20_seg(tmp_path_factory):
    pytest.importorskip("highdicom")
    return _write_seg(CT20, tmp_path_factory.mktemp("seg"))


@pytest.mark.integration
@pytest.mark.parametrize("series", [CT20, CT3], ids=["totalseg_ct20", "dcmqi_ct3slice"])
def test_dciodvfy_finds_no_error(tmp_path, series):
    pytest.importorskip("highdicom")
    _, _, seg = _write_seg(series, tmp_path)
    done = subprocess.run([_tool("dciodvfy"), str(seg)], capture_output=True, text=True, timeout=60)
    report = done.stdout + done.stderr
    assert "Segmentation" in report  # the IOD it recognised and checked
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], report


@pytest.mark.integration
def test_dcmqi_decodes_it_voxel_for_voxel_with_the_bundles_codes(ct20_seg, tmp_path):
    labels, affine, seg = ct20_seg
    done = subprocess.run(
        [
            _tool("segimage2itkimage"),
            "--inputDICOM",
            str(seg),
            "--outputDirectory",
            str(tmp_path),
            "--outputType",
            "nifti",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    attributes = {item["labelID"]: item for group in meta["segmentAttributes"] for item in group}
    assert sorted(attributes) == [1, 2]

    to_ct = np.linalg.inv(affine)
    for number in attributes:
        decoded = nib.load(tmp_path / f"{number}.nii.gz")
        points = np.argwhere(np.asarray(decoded.dataobj) > 0)
        world = decoded.affine[:3, :3] @ points.T + decoded.affine[:3, 3:]
        voxels = to_ct[:3, :3] @ world + to_ct[:3, 3:]
        assert np.abs(voxels - np.rint(voxels)).max() < 1e-3  # dcmqi's grid is the CT grid
        mask = np.zeros(labels.shape, dtype=bool)
        mask[tuple(np.rint(voxels).astype(int))] = True
        assert mask.sum() == (labels == number).sum() > 1000
        assert np.array_equal(mask, labels == number)

    declared = _metadata()["dicom_seg"]["segments"]
    for number, item in attributes.items():
        expected = declared[str(number)]
        assert item["SegmentLabel"] == {1: "anterior", 2: "posterior"}[number]
        assert item["SegmentDescription"] == expected["SegmentDescription"]
        for key in (
            "SegmentedPropertyCategoryCodeSequence",
            "SegmentedPropertyTypeCodeSequence",
            "SegmentedPropertyTypeModifierCodeSequence",
        ):
            assert item[key] == expected[key], key
        assert (
            np.abs(np.subtract(item["recommendedDisplayRGBValue"], expected["recommendedDisplayRGBValue"])).max() <= 1
        )
        assert item["SegmentAlgorithmName"] == "hippocampus_unet25d_segmentation"
    assert attributes[1]["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == "5366008"  # SCT Hippocampus
    assert attributes[1]["recommendedDisplayRGBValue"] != attributes[2]["recommendedDisplayRGBValue"]
    assert meta["SeriesDescription"] == _metadata()["dicom_seg"]["SeriesDescription"]
    assert "ContentCreatorName" in meta


def test_series_attributes_say_what_made_it(ct20_seg):
    _, _, path = ct20_seg
    seg = pydicom.dcmread(path)
    metadata = _metadata()
    assert seg.SeriesDescription == metadata["dicom_seg"]["SeriesDescription"] != "Segmentation"
    assert "ContentCreatorName" in seg and seg.ContentCreatorName == ""  # type 2: present, empty
    assert seg.BodyPartExamined == "PARTIALBODY"  # the source's
    assert 1 <= int(seg.SeriesNumber) <= 999  # the source has no SeriesNumber
    assert seg.ManufacturerModelName == metadata["name"]
    for item in seg.SegmentSequence:
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (metadata["name"], metadata["version"])
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        assert "RecommendedDisplayCIELabValue" in item
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert str(measures.SpacingBetweenSlices) == "2"

    import highdicom

    parsed = highdicom.seg.segread(path)
    described = parsed.get_segment_description(2)
    assert described.segmented_property_type.meaning == "Hippocampus"
    assert described.segment_label == "posterior"


def test_series_number_follows_the_source_and_differs_per_run_and_model(tmp_path):
    pytest.importorskip("highdicom")
    _, _, path = _write_seg(CT3, tmp_path)
    number = int(pydicom.dcmread(path).SeriesNumber)
    assert number // 1000 == 2 and number % 1000 >= 1  # the committed series is series 2
    runs = {derive_series_number(2, "hippocampus 0.1.0", now=t) for t in range(1000, 1100)}
    assert len(runs) > 90 and all(2001 <= n <= 2999 for n in runs)
    assert derive_series_number(2, "a 1", now=5) != derive_series_number(2, "b 1", now=5)
    assert 1 <= derive_series_number("", "a", now=5) <= 999
    assert 1 <= derive_series_number(2**31, "a", now=5) <= 999  # would overflow IS


def test_clean_decimal():
    assert clean_decimal(0.99999999999999) == "1"
    assert clean_decimal(2.5) == "2.5"
    assert clean_decimal(0.8105469999) == "0.810547"
    assert clean_decimal(-1e-12) == "0"


def test_codes_come_from_metadata_then_dicom_lists_then_tissue(caplog):
    liver = standard_coding("liver")
    assert (liver.type.value, liver.category.value) == ("10200004", "91723000")  # CID 7192: anatomical structure
    fat = standard_coding("adipose tissue")
    assert (fat.type.value, fat.category.value) == ("55603005", "85756007")  # CID 7191: tissue
    assert standard_coding("lesion_xyz") is None

    pytest.importorskip("highdicom")
    data = EnsureChannelFirstd("image")(LoadImaged("image", reader=DicomSeriesReader())({"image": str(CT3)}))
    labels = (data["image"][0].numpy() > 200).astype(np.uint8)
    labels[:10, :10, 0] = 2
    with caplog.at_level(logging.WARNING):
        seg = build_dicom_seg(labels, data["image"].affine.numpy(), CT3, {"1": "liver", "2": "lesion_xyz"})
    items = {item.SegmentLabel: item for item in seg.SegmentSequence}
    assert items["liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert items["lesion_xyz"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # the last resort
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'lesion_xyz'" in message and "'liver'" not in message for message in warned), warned


def test_metadata_errors_name_the_segment():
    metadata = _metadata()
    broken = copy.deepcopy(metadata)
    broken["dicom_seg"]["segments"]["2"]["SegmentedPropertyTypeCodeSequence"] = {"CodeValue": "5366008"}
    with pytest.raises(ValueError, match="segment 2 type: a code needs CodeValue, CodingSchemeDesignator"):
        SegDescription.from_metadata(broken)
    broken = copy.deepcopy(metadata)
    broken["dicom_seg"]["segments"]["7"] = broken["dicom_seg"]["segments"]["1"]
    with pytest.raises(ValueError, match=r"segment 7 is not a label of the bundle \(labels \[1, 2\]\)"):
        SegDescription.from_metadata(broken)
    broken = copy.deepcopy(metadata)
    broken["dicom_seg"]["segments"]["1"]["recommendedDisplayRGBValue"] = [300, 0, 0]
    with pytest.raises(ValueError, match="recommendedDisplayRGBValue"):
        SegDescription.from_metadata(broken)
    described = SegDescription.from_metadata(metadata, algorithm_version="0.1.0 (registered v3)")
    assert described.algorithm_version == "0.1.0 (registered v3)" and described.segments[2].rgb == (64, 160, 255)
