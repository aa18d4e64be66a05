"""SaveSegmentationd and friends on real files: hippocampus NIfTI, PNG images, DICOM CT series -> DICOM SEG."""

from __future__ import annotations

import copy
import errno
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd, SaveImaged, Spacingd
from PIL import Image

from monai_unet2.data import (
    DicomSegError,
    DicomSeriesReader,
    OutputWriteError,
    build_dicom_seg,
    output_paths,
    pending_inputs,
    seg_to_grid,
    write_atomically,
)
from monai_unet2.data.dicom_seg import segment_names
from monai_unet2.transforms import LoadDicomSegd, SaveSegmentationd

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation" / "sample_data"
DICOM = ROOT / "tests" / "data" / "dicom"
SHARED = ROOT.parent / "shared" / "data"
IMAGES = sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))


def _hippocampus(index: int = 0) -> dict:
    image = IMAGES[index]
    keys = ["image", "label"]
    data = LoadImaged(keys)({"image": str(image), "label": str(SAMPLE / "labelsTr" / image.name)})
    data = EnsureChannelFirstd(keys)(data)
    data["pred"] = data["label"]
    return data


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------------------- NIfTI


def test_nifti_has_input_shape_affine_voxels_and_name(tmp_path):
    data = _hippocampus(0)
    SaveSegmentationd("pred", tmp_path / "out")(data)
    stem = IMAGES[0].name[: -len(".nii.gz")]
    assert _files(tmp_path / "out") == [f"{stem}_seg.nii.gz"]
    written = nib.load(tmp_path / "out" / f"{stem}_seg.nii.gz")
    source = nib.load(IMAGES[0])
    label = np.asarray(nib.load(SAMPLE / "labelsTr" / IMAGES[0].name).dataobj)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert written.get_data_dtype() == np.uint8
    values = np.asarray(written.dataobj)
    assert np.array_equal(values, label.astype(np.uint8))
    assert set(np.unique(values)) == {0, 1, 2}
    assert data["pred"].meta["saved_to"] == str(tmp_path / "out" / f"{stem}_seg.nii.gz")


def test_after_invertd_and_without_it_output_is_on_input_grid(tmp_path):
    keys = ["image", "label"]
    preprocessing = Compose(
        [
            LoadImaged(keys),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="LPS", labels=None),
            Spacingd(keys, pixdim=(1.5, 1.2, 0.9), mode=("bilinear", "nearest")),
        ]
    )
    data = preprocessing({"image": str(IMAGES[1]), "label": str(SAMPLE / "labelsTr" / IMAGES[1].name)})
    source = nib.load(IMAGES[1])
    assert data["image"].shape[1:] != source.shape
    data["pred"] = data["label"].clone()
    inverted = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=True)(dict(data))
    SaveSegmentationd("pred", tmp_path, output_postfix="inverted")(inverted)
    SaveSegmentationd("pred", tmp_path, output_postfix="raw")({"pred": data["pred"]})  # no Invertd: resampled
    label = np.asarray(nib.load(SAMPLE / "labelsTr" / IMAGES[1].name).dataobj)
    stem = IMAGES[1].name[: -len(".nii.gz")]
    for postfix in ("inverted", "raw"):
        written = nib.load(tmp_path / f"{stem}_{postfix}.nii.gz")
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
        agreement = (np.asarray(written.dataobj) == label).mean()
        assert agreement > 0.98, (postfix, agreement)  # nearest resampling there and back loses a few voxels


def test_rejects_probabilities_and_multichannel(tmp_path):
    data = _hippocampus(0)
    data["pred"] = data["label"] * 0.5
    with pytest.raises(ValueError, match="non-integer"):
        SaveSegmentationd("pred", tmp_path)(data)
    data["pred"] = torch.cat([data["label"]] * 3)
    with pytest.raises(ValueError, match="3 channels"):
        SaveSegmentationd("pred", tmp_path)(data)
    data["pred"] = data["label"] * 300
    with pytest.raises(ValueError, match="outside uint8"):
        SaveSegmentationd("pred", tmp_path)(data)
    assert _files(tmp_path) == []


def test_monai_label_drops_it_like_saveimaged(tmp_path):
    # monailabel's BundleInferTask removes postprocessing transforms that are instances of SaveImaged
    assert isinstance(SaveSegmentationd("pred", tmp_path), SaveImaged)


def test_output_names():
    assert output_paths("/d/case_1.nii.gz", "/o") == ["/o/case_1_seg.nii.gz"]
    assert output_paths("/d/case.v2.nii", "/o", "pred") == ["/o/case.v2_pred.nii.gz"]
    assert output_paths("/d/em.tif", "/o", output_format="png") == ["/o/em_seg.png"]
    ct = str(DICOM / "dcmqi_ct3slice" / "ct") + os.sep
    assert output_paths(ct, "/o", output_format="dicom_seg") == ["/o/ct_seg.nii.gz", "/o/ct_seg.dcm"]
    assert output_paths("/d/case.nii.gz", "/o", output_format="dicom_seg") == ["/o/case_seg.nii.gz"]
    with pytest.raises(ValueError, match="output_format"):
        output_paths("/d/case.nii.gz", "/o", output_format="nrrd")


# ----------------------------------------------------------------------------------------------- atomicity


def _failing_save(real_save):
    def save(image, filename, *args, **kwargs):
        real_save(image, filename, *args, **kwargs)
        with open(filename, "r+b") as handle:  # a partial file is on disk when the device fills up
            handle.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    return save


def test_failed_write_leaves_no_file_and_no_temp(tmp_path, monkeypatch):
    data = _hippocampus(0)
    monkeypatch.setattr(nib, "save", _failing_save(nib.save))
    with pytest.raises(OutputWriteError, match="no space left") as info:
        SaveSegmentationd("pred", tmp_path)(data)
    assert str(tmp_path / (IMAGES[0].name[: -len(".nii.gz")] + "_seg.nii.gz")) in str(info.value)
    assert _files(tmp_path) == []


def test_failed_rewrite_keeps_previous_output(tmp_path, monkeypatch):
    data = _hippocampus(0)
    (path,) = SaveSegmentationd("pred", tmp_path).save(data["pred"], data["pred"].meta)
    before = Path(path).read_bytes()
    monkeypatch.setattr(nib, "save", _failing_save(nib.save))
    with pytest.raises(OutputWriteError):
        SaveSegmentationd("pred", tmp_path).save(data["pred"] * 0, data["pred"].meta)
    assert Path(path).read_bytes() == before
    assert _files(tmp_path) == [Path(path).name]


def test_unwritable_output_dir_names_the_path(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    target = blocker / "predictions"
    with pytest.raises(OutputWriteError, match="a parent of it is a file") as info:
        SaveSegmentationd("pred", target)(_hippocampus(0))
    assert str(target) in str(info.value)
    with pytest.raises(OutputWriteError, match=str(blocker / "x.nii.gz")):
        write_atomically(blocker / "x.nii.gz", lambda tmp: Path(tmp).write_bytes(b"x"))


def test_write_atomically_cleans_up_after_any_error(tmp_path):
    def crash(temporary: str) -> None:
        Path(temporary).write_bytes(b"half")
        raise RuntimeError("encoder crashed")

    with pytest.raises(OutputWriteError, match="RuntimeError: encoder crashed"):
        write_atomically(tmp_path / "a_seg.nii.gz", crash)
    assert _files(tmp_path) == []
    seen = []
    write_atomically(tmp_path / "b_seg.nii.gz", lambda tmp: (seen.append(tmp), Path(tmp).write_bytes(b"ok")))
    assert Path(seen[0]).name.startswith(".b_seg.tmp-") and seen[0].endswith(".nii.gz")
    assert _files(tmp_path) == ["b_seg.nii.gz"]


# -------------------------------------------------------------------------------------------------- resume


def test_resume_skips_existing_and_pending_inputs_filters(tmp_path):
    datalist = [{"image": str(path)} for path in IMAGES[:3]]
    data = _hippocampus(0)
    (path,) = SaveSegmentationd("pred", tmp_path).save(data["pred"], data["pred"].meta)
    first = os.stat(path)
    assert pending_inputs(datalist, tmp_path) == datalist[1:]
    assert pending_inputs([str(p) for p in IMAGES[:3]], tmp_path) == [str(p) for p in IMAGES[1:3]]
    assert pending_inputs(datalist, tmp_path, output_postfix="other") == datalist

    SaveSegmentationd("pred", tmp_path, resume=True)(_hippocampus(0))
    again = os.stat(path)
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    SaveSegmentationd("pred", tmp_path, resume=False)(_hippocampus(0))
    assert os.stat(path).st_ino != first.st_ino  # rewritten (atomically: a new file renamed over the old one)

    stem = IMAGES[1].name[: -len(".nii.gz")]
    (tmp_path / f".{stem}_seg.tmp-0123456789ab.nii.gz").write_bytes(b"left by a killed run")
    assert pending_inputs(datalist, tmp_path) == datalist[1:]


def test_pending_inputs_dicom_seg_needs_both_finished_files(tmp_path):
    """Resume counts an input as done only when every output is there and finished: a 0-byte SEG (or NIfTI) under
    the final name is redone (before: any file counted)."""
    pytest.importorskip("highdicom")
    folder = DICOM / "dcmqi_ct3slice" / "ct"
    datalist = [{"image": str(folder)}]
    assert pending_inputs(datalist, tmp_path, output_format="dicom_seg") == datalist
    data, _ = _ct_with_prediction(folder)
    SaveSegmentationd("pred", tmp_path, output_format="dicom_seg")(data)
    assert pending_inputs(datalist, tmp_path, output_format="dicom_seg") == []
    assert pending_inputs(datalist, tmp_path, output_format="nifti") == []
    (tmp_path / "ct_seg.dcm").write_bytes(b"")
    assert pending_inputs(datalist, tmp_path, output_format="nifti") == []
    assert pending_inputs(datalist, tmp_path, output_format="dicom_seg") == datalist
    (tmp_path / "ct_seg.dcm").unlink()
    assert pending_inputs(datalist, tmp_path, output_format="dicom_seg") == datalist
    (tmp_path / "ct_seg.nii.gz").write_bytes(b"")
    assert pending_inputs(datalist, tmp_path, output_format="nifti") == datalist


# ----------------------------------------------------------------------------------------------------- PNG


def _png_round_trip(image_path: Path, out: Path, threshold: float, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    data = EnsureChannelFirstd("image")(LoadImaged("image", reader="PILReader")({"image": str(image_path)}))
    intensity = data["image"] if data["image"].shape[0] == 1 else data["image"][1:2]  # green channel of RGB
    data["pred"] = (intensity > threshold).to(torch.uint8)
    SaveSegmentationd("pred", out, output_format="png", **kwargs)(data)
    written = Image.open(out / f"{image_path.stem}_seg.png")
    with Image.open(image_path) as original:
        assert written.size == original.size
        pixels = np.asarray(original)
    return np.asarray(written), pixels


def test_png_binary_keeps_width_height_and_writes_0_255(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(23, 37), dtype=np.uint8)  # 23 rows (height) x 37 columns (width)
    Image.fromarray(pixels).save(tmp_path / "small.png")
    written, _ = _png_round_trip(tmp_path / "small.png", tmp_path / "out", threshold=128)
    assert written.shape == (23, 37) and written.dtype == np.uint8
    assert set(np.unique(written)) == {0, 255}
    assert np.array_equal(written, (pixels > 128).astype(np.uint8) * 255)


def test_png_multiclass_keeps_label_values(tmp_path):
    pixels = np.zeros((20, 31), dtype=np.uint8)
    pixels[2:8, 3:20], pixels[10:18, 5:9] = 1, 2
    Image.fromarray(pixels).save(tmp_path / "labels.png")
    data = EnsureChannelFirstd("pred")(LoadImaged("pred")({"pred": str(tmp_path / "labels.png")}))
    SaveSegmentationd("pred", tmp_path / "out", output_format="png")(data)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "labels_seg.png")), pixels)
    binary = pixels.clip(0, 1)
    Image.fromarray(binary).save(tmp_path / "mask.png")
    data = EnsureChannelFirstd("pred")(LoadImaged("pred")({"pred": str(tmp_path / "mask.png")}))
    names = {"0": "background", "1": "cells", "2": "nuclei"}
    SaveSegmentationd("pred", tmp_path / "out", output_format="png", label_names=names)(data)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "mask_seg.png")), binary)  # 1 stays 1


@pytest.mark.skipif(not (SHARED / "isbi2012_em_membrane").is_dir(), reason="../shared/data not present")
def test_png_isbi_label_round_trip(tmp_path):
    written, original = _png_round_trip(SHARED / "isbi2012_em_membrane" / "labels" / "0.png", tmp_path, 127)
    assert np.array_equal(written, original)


@pytest.mark.skipif(not (SHARED / "drive").is_dir(), reason="../shared/data not present")
def test_png_drive_tiff_non_square(tmp_path):
    image = sorted((SHARED / "drive" / "training" / "images").glob("*.tif"))[0]
    written, original = _png_round_trip(image, tmp_path, 60)
    assert written.shape == original.shape[:2] == (584, 565)
    assert np.array_equal(written, (original[..., 1] > 60).astype(np.uint8) * 255)


# ----------------------------------------------------------------------------------------------- DICOM SEG


def _ct_with_prediction(folder: Path) -> tuple[dict, np.ndarray]:
    data = EnsureChannelFirstd("image")(LoadImaged("image", reader=DicomSeriesReader())({"image": str(folder)}))
    hounsfield = data["image"][0].numpy()
    labels = np.zeros(hounsfield.shape, dtype=np.uint8)
    labels[hounsfield > 200] = 1  # bone
    labels[100:180, 150:260, 1:3] = 2  # a box over two slices
    data["pred"] = MetaTensor(torch.as_tensor(labels[None]), meta=copy.deepcopy(data["image"].meta))
    return data, labels


def _source_headers(folder: Path) -> dict[str, pydicom.Dataset]:
    headers = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        headers[ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID] = ds
    return headers


@pytest.mark.parametrize("series", ["dcmqi_ct3slice", "totalseg_ct20"])
def test_dicom_seg_round_trip_and_references(tmp_path, series):
    pytest.importorskip("highdicom")
    folder = DICOM / series / "ct"
    data, labels = _ct_with_prediction(folder)
    assert (labels == 1).sum() > 1000 and (labels == 2).sum() == 80 * 110 * 2
    names = {"0": "background", "1": "bone", "2": "box"}
    SaveSegmentationd("pred", tmp_path, output_format="dicom_seg", label_names=names)(data)
    assert _files(tmp_path) == ["ct_seg.dcm", "ct_seg.nii.gz"]

    channels, segments = seg_to_grid(str(tmp_path / "ct_seg.dcm"), data["image"].affine, labels.shape)
    assert [(s["number"], s["label"]) for s in segments] == [(1, "bone"), (2, "box")]
    assert np.array_equal(channels[0], labels == 1) and np.array_equal(channels[1], labels == 2)
    loaded = LoadDicomSegd("seg", labelmap=True)({"image": data["image"], "seg": str(tmp_path / "ct_seg.dcm")})
    assert np.array_equal(loaded["seg"][0].numpy(), labels)
    nifti = nib.load(tmp_path / "ct_seg.nii.gz")
    assert np.array_equal(np.asarray(nifti.dataobj), labels)
    np.testing.assert_allclose(nifti.affine, data["image"].affine.numpy(), atol=1e-4)  # RAS, as MONAI reads it

    sources = _source_headers(folder)
    assert pydicom.misc.is_dicom(tmp_path / "ct_seg.dcm")
    seg = pydicom.dcmread(tmp_path / "ct_seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == next(iter(sources.values())).FrameOfReferenceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(sources)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in sources[uid].ImagePositionPatient], atol=1e-3)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "PlaneOrientationSequence" in shared and "PixelMeasuresSequence" in shared
    frames = seg.PerFrameFunctionalGroupsSequence
    segment_of_frame = [f.SegmentIdentificationSequence[0].ReferencedSegmentNumber for f in frames]
    assert segment_of_frame.count(2) == 2  # one frame per slice holding the box

    import highdicom

    parsed = highdicom.seg.segread(tmp_path / "ct_seg.dcm")
    assert parsed.number_of_segments == 2
    assert {uid for _, _, uid in parsed.get_source_image_uids()} == set(sources)


def test_dicom_seg_refuses_a_grid_that_is_not_the_series(tmp_path):
    pytest.importorskip("highdicom")
    data, labels = _ct_with_prediction(DICOM / "dcmqi_ct3slice" / "ct")
    shifted = data["image"].affine.numpy().copy()
    shifted[:3, 3] += 0.5 * shifted[:3, 0]  # half a voxel along the columns
    with pytest.raises(DicomSegError, match="none of its 3 slices lies on the prediction's grid"):
        build_dicom_seg(labels, shifted, DICOM / "dcmqi_ct3slice" / "ct")
    with pytest.raises(DicomSegError, match="foreground voxels lie on no source slice"):
        build_dicom_seg(np.concatenate([labels, labels], axis=2), data["image"].affine, DICOM / "dcmqi_ct3slice" / "ct")
    empty = build_dicom_seg(np.zeros_like(labels), data["image"].affine, DICOM / "dcmqi_ct3slice" / "ct")
    assert empty.SegmentSequence[0].SegmentLabel == "label_1"


def test_dicom_seg_without_highdicom_fails_before_inference(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # what an environment without the extra looks like
    with pytest.raises(ImportError, match=r"monai-unet2\[dicom-seg\]"):
        SaveSegmentationd("pred", tmp_path, output_format="dicom_seg")
    SaveSegmentationd("pred", tmp_path, output_format="nifti")  # the other formats don't need it


def test_segment_names():
    assert segment_names({"0": "background", "1": "liver"}, 3) == {1: "liver", 2: "label_2", 3: "label_3"}
    assert segment_names(["background", "a", "b"], 0) == {1: "a", 2: "b"}
    assert segment_names(None, 0) == {1: "label_1"}
