"""Hostile DICOM input, made from the committed CT series (tests/data/dicom): every case is read correctly (checked with
numbers against the untouched series) or refused with one line naming the file and the problem."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import LoadImage
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from monai_unet2.data import DicomSeriesError, DicomSeriesReader, VolumeFileError
from monai_unet2.transforms import SafeLoadImaged

DATA = Path(__file__).resolve().parent / "data" / "dicom"
CT20_FILES = sorted((DATA / "totalseg_ct20" / "ct").glob("*.dcm"))
CT3_FILES = sorted((DATA / "dcmqi_ct3slice" / "ct").glob("*.dcm"))


def _load(path, **kwargs):
    return LoadImage(reader=DicomSeriesReader(**kwargs), ensure_channel_first=True)(str(path))


def _copy(folder: Path, files=CT20_FILES, edit=None) -> list[Path]:
    """Copy a series into ``folder``; ``edit(index, ds)`` may change a slice before it is written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, source in enumerate(files):
        target = folder / source.name
        if edit is None:
            shutil.copy(source, target)
        else:
            ds = pydicom.dcmread(source)
            edit(index, ds)
            ds.save_as(target)
        written.append(target)
    return written


@pytest.fixture(scope="module")
def ct20():
    return _load(CT20_FILES[0].parent)


@pytest.fixture(scope="module")
def ct3():
    return _load(CT3_FILES[0].parent)


@pytest.mark.parametrize("which", [0, -1])
def test_a_slice_with_a_damaged_header_is_an_error_not_a_skip(tmp_path, which):
    files = _copy(tmp_path)
    by_position = sorted(files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    victim = by_position[which]  # an end of the series: leaving it out leaves no gap to detect
    payload = bytearray(victim.read_bytes())
    payload[132:164] = np.random.default_rng(0).integers(0, 256, 32, dtype=np.uint8).tobytes()
    victim.write_bytes(bytes(payload))
    with pytest.raises(DicomSeriesError) as caught:
        _load(tmp_path)
    assert str(caught.value).startswith(f"DICOM folder {tmp_path}: file {victim} does not parse as DICOM")
    assert "damaged header" in str(caught.value)


def test_rescale_missing_in_some_slices_is_refused_naming_them(tmp_path):
    def drop(index, ds):
        if index in (3, 4, 5, 6):
            del ds.RescaleSlope, ds.RescaleIntercept

    files = _copy(tmp_path, edit=drop)
    with pytest.raises(DicomSeriesError) as caught:
        _load(tmp_path)
    message = str(caught.value)
    assert (
        "RescaleIntercept is missing in 4 of 20 slices" in message and "present in the others (e.g. -1024)" in message
    )
    assert all(files[i].name in message for i in (3, 4, 5, 6))


def test_rescale_that_differs_per_slice_is_applied_per_slice(tmp_path, ct3):
    def rescale(index, ds):
        if index == 1:  # same Hounsfield units, stored with another intercept and slope
            ds.PixelData = ((ds.pixel_array.astype(np.int32) + 24) // 2).astype(np.int16).tobytes()
            ds.RescaleSlope, ds.RescaleIntercept = 2, -1048

    _copy(tmp_path, CT3_FILES, rescale)
    read = _load(tmp_path)
    expected = ct3.clone()
    expected[..., 1] = torch.div(expected[..., 1] + 1024 + 24, 2, rounding_mode="floor") * 2 - 1048  # the odd HU lost
    torch.testing.assert_close(read, expected)
    assert float((read[..., 1] - ct3[..., 1]).abs().max()) <= 1  # within the one HU the halving loses


def test_non_numeric_rescale_names_the_slice_and_values_print_plainly(tmp_path):
    def bad(index, ds):
        if index == 2:
            ds._dict[Tag(0x00281053)] = RawDataElement(Tag(0x00281053), "DS", 4, b"abcd", 0, False, True)
        if index == 5:
            ds.PixelSpacing = [0.8, 0.8]

    files = _copy(tmp_path / "abcd", edit=lambda i, ds: bad(i, ds) if i == 2 else None)
    with pytest.raises(DicomSeriesError) as caught:
        _load(tmp_path / "abcd")
    assert (
        str(caught.value) == f"DICOM folder {tmp_path / 'abcd'}: file {files[2]} has RescaleSlope 'abcd', not a number"
    )
    _copy(tmp_path / "spacing", edit=lambda i, ds: bad(i, ds) if i == 5 else None)
    with pytest.raises(DicomSeriesError) as caught:
        _load(tmp_path / "spacing")
    assert "PixelSpacing changes within the series: (0.976562, 0.976562) in 19 files" in str(caught.value)
    assert "(0.8, 0.8)" in str(caught.value) and "np.float64" not in str(caught.value)


def test_identical_copy_is_read_once_with_a_warning(tmp_path, ct20, caplog):
    _copy(tmp_path)
    shutil.copy(CT20_FILES[7], tmp_path / "copy_of_slice_8.dcm")
    with caplog.at_level(logging.WARNING, logger="monai_unet2"):
        read = _load(tmp_path)
    torch.testing.assert_close(read, ct20)
    copies = "1 identical copies (same SOPInstanceUID and pixel data) read once"
    assert f"{copies}: copy_of_slice_8.dcm = {CT20_FILES[7].name}" in caplog.text


def test_same_instance_with_other_pixels_is_refused_naming_both(tmp_path):
    _copy(tmp_path, CT3_FILES)
    ds = pydicom.dcmread(CT3_FILES[1])
    ds.PixelData = (ds.pixel_array + 1).astype(np.int16).tobytes()
    ds.save_as(tmp_path / "edited.dcm")
    with pytest.raises(DicomSeriesError) as caught:
        _load(tmp_path)
    assert f"{CT3_FILES[1].name} and edited.dcm share SOPInstanceUID" in str(caught.value)
    assert "hold different pixel data" in str(caught.value)


def test_two_series_of_equal_size_are_refused_naming_both(tmp_path, ct3):
    _copy(tmp_path, CT3_FILES)
    other = "1.2.826.0.1.3680043.8.498.77"
    for index, source in enumerate(CT3_FILES):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = other, generate_uid()
        ds.save_as(tmp_path / f"other_{index}.dcm")
    original = str(pydicom.dcmread(CT3_FILES[0]).SeriesInstanceUID)
    with pytest.raises(DicomSeriesError) as caught:
        _load(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"DICOM folder {tmp_path} holds 2 series of 3 slices each")
    assert f"series {original}" in message and f"series {other}" in message and "series_uid=" in message
    torch.testing.assert_close(_load(tmp_path, series_uid=other), ct3)
    data = SafeLoadImaged("image", reader="monai_unet2.data.DicomSeriesReader", series_uid=original)(
        {"image": str(tmp_path)}
    )
    assert data["image"].meta["SeriesInstanceUID"] == original


def test_series_uid_from_the_bundle_command_line_reaches_the_reader(tmp_path, ct3):
    """``--preprocessing#transforms#0#series_uid <uid>`` on the hippocampus inference config: SafeLoadImaged gives
    it to DicomSeriesReader only, so NIfTI inputs of the same run still load."""
    from monai.bundle import ConfigParser

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "hippocampus_unet25d_segmentation"
    _copy(tmp_path / "two", CT3_FILES)
    for index, source in enumerate(CT3_FILES):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.78", generate_uid()
        ds.save_as(tmp_path / "two" / f"other_{index}.dcm")
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser.update({"bundle_root": str(bundle), "preprocessing#transforms#0#series_uid": "1.2.826.0.1.3680043.8.498.78"})
    parser["force_modality"] = True  # a CT through the MR bundle: its modality guard refuses it otherwise
    preprocessing = parser.get_parsed_content("preprocessing")
    image = preprocessing({"image": str(tmp_path / "two")})["image"]
    assert image.meta["SeriesInstanceUID"] == "1.2.826.0.1.3680043.8.498.78"
    nifti = bundle / "sample_data" / "imagesTr" / "hippocampus_004.nii.gz"
    assert preprocessing({"image": str(nifti)})["image"].shape[0] == 1


def _enhanced(target: Path, files=CT20_FILES) -> Path:
    """An enhanced multi-frame CT made from the single-frame series by highdicom's legacy converter. The source files
    keep SOPClassUID / SOPInstanceUID in their file meta only; copies get them in the data set, as the converter
    requires."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    sources = [pydicom.dcmread(path) for path in files]
    for ds in sources:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    converted = LegacyConvertedEnhancedCTImage(sources, generate_uid(), 99, generate_uid(), 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    converted.save_as(target)
    return target


def test_enhanced_multiframe_reads_like_the_series_it_was_made_from(tmp_path, ct20):
    path = _enhanced(tmp_path / "enhanced" / "ct.dcm")
    frames = pydicom.dcmread(path, stop_before_pixels=True)
    assert int(frames.NumberOfFrames) == 20 and "PerFrameFunctionalGroupsSequence" in frames
    for source in (path.parent, path):  # the folder, or the file itself
        read = _load(source)
        assert read.shape == ct20.shape == (1, 512, 512, 20)
        np.testing.assert_allclose(read.affine.numpy(), ct20.affine.numpy(), atol=1e-4)
        torch.testing.assert_close(read, ct20)
        np.testing.assert_allclose(read.meta["spacing"], [0.9765625, 0.9765625, 2.0])


def test_enhanced_frames_in_any_order_and_without_per_frame_groups(tmp_path, ct20):
    path = _enhanced(tmp_path / "enhanced" / "ct.dcm")
    ds = pydicom.dcmread(path)
    order = np.random.default_rng(1).permutation(20)
    ds.PerFrameFunctionalGroupsSequence = [ds.PerFrameFunctionalGroupsSequence[i] for i in order]
    frames = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=20)
    encoded = list(frames)
    ds.PixelData = pydicom.encaps.encapsulate([encoded[i] for i in order])
    ds.save_as(path)
    torch.testing.assert_close(_load(path), ct20)
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(path)
    with pytest.raises(DicomSeriesError) as caught:
        _load(path)
    assert f"file {path} is a multi-frame image (20 frames) without per-frame functional groups" in str(caught.value)


@pytest.mark.parametrize(
    ("tag", "value", "expected"),
    [
        ("PixelSpacing", ["nan", "0.9765625"], "has PixelSpacing [nan, 0.9765625], not 2 finite numbers"),
        ("PixelSpacing", None, "has no PixelSpacing: the size of its pixels in mm is unknown"),
        ("PixelSpacing", [0, 0.9765625], "has PixelSpacing [0.0, 0.9765625]: spacings must be positive"),
        ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], "its row and column directions are not perpendicular"),
        ("ImageOrientationPatient", [0, 0, 0, 0, 1, 0], "its row and column directions have lengths 0 and 1"),
        ("ImagePositionPatient", ["-249.5", "inf", "-766.5"], "has ImagePositionPatient [-249.5, inf, -766.5]"),
    ],
)
def test_geometry_nonsense_in_one_slice_names_it(tmp_path, tag, value, expected):
    def edit(index, ds):
        if index == 4:
            if value is None:
                delattr(ds, tag)
            else:
                ds._dict[Tag(pydicom.datadict.tag_for_keyword(tag))] = RawDataElement(
                    Tag(pydicom.datadict.tag_for_keyword(tag)),
                    "DS",
                    0,
                    "\\".join(str(v) for v in value).encode(),
                    0,
                    False,
                    True,
                )

    files = _copy(tmp_path, edit=edit)
    with pytest.raises(DicomSeriesError) as caught:
        _load(tmp_path)
    assert str(caught.value).startswith(f"DICOM folder {tmp_path}: file {files[4]} ")
    assert expected in str(caught.value)


def test_rescale_that_overflows_float32_is_named(tmp_path):
    def huge(index, ds):
        if index == 1:
            ds.RescaleSlope = "1e38"

    files = _copy(tmp_path, CT3_FILES, huge)
    with pytest.raises(DicomSeriesError) as caught:
        _load(tmp_path)
    assert f"{files[1].name}: RescaleSlope 1e+38 and RescaleIntercept -1024 scale its pixel values up to" in str(
        caught.value
    )
    assert "beyond the float32 range" in str(caught.value)


def test_mixed_photometric_interpretation_is_refused(tmp_path):
    def invert(index, ds):
        if index == 0:
            ds.PhotometricInterpretation = "MONOCHROME1"

    _copy(tmp_path, CT3_FILES, invert)
    with pytest.raises(DicomSeriesError, match=r"PhotometricInterpretation changes within the series: MONOCHROME2"):
        _load(tmp_path)


def test_single_slice_series_has_its_thickness_as_slice_step(tmp_path, ct3):
    _copy(tmp_path, CT3_FILES[1:2])
    read = _load(tmp_path)
    assert read.shape == (1, 512, 512, 1)
    torch.testing.assert_close(read[..., 0], ct3[..., 1])
    np.testing.assert_allclose(read.meta["spacing"], [*ct3.meta["spacing"][:2], 1.25])  # SliceThickness


def test_dicom_content_under_a_nifti_name_and_a_folder_without_dicom(tmp_path):
    named = tmp_path / "scan.nii.gz"
    shutil.copy(CT3_FILES[0], named)
    with pytest.raises(VolumeFileError) as caught:
        SafeLoadImaged("image")({"image": str(named)})
    assert str(caught.value) == f"{named}: cannot read image (it is a DICOM file, not the NIfTI file its name says)"
    (tmp_path / "empty_series").mkdir()
    (tmp_path / "empty_series" / "notes.txt").write_text("no images here")
    with pytest.raises(VolumeFileError) as caught:
        SafeLoadImaged("image")({"image": str(tmp_path / "empty_series")})
    assert str(caught.value) == f"{tmp_path / 'empty_series'}: cannot read image (a folder without DICOM files)"


def test_empty_and_text_files_named_dcm_in_a_series_are_named_for_what_they_are(tmp_path):
    _copy(tmp_path, CT3_FILES)
    (tmp_path / "zero.dcm").touch()
    with pytest.raises(DicomSeriesError) as caught:
        _load(tmp_path)
    assert (
        str(caught.value)
        == f"DICOM folder {tmp_path}: file {tmp_path / 'zero.dcm'} is not DICOM: it is an empty file (0 bytes)"
    )
    (tmp_path / "zero.dcm").unlink()
    (tmp_path / "readme.dcm").write_text("exported by the PACS\n")
    with pytest.raises(DicomSeriesError) as caught:
        _load(tmp_path)
    assert str(caught.value).endswith("readme.dcm is not DICOM: it is a text file (starting 'exported by the PACS')")
