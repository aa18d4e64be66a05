"""The modality guard on real files: the committed CT series, the hippocampus MR sample, and an MR series written
from that sample (its voxels and geometry, MR headers): refused when DICOM says another modality or body part,
warned about when a NIfTI's intensities look like another modality, forced with ``force_modality``."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from monai_unet2.data import DicomSeriesReader, ModalityMismatchError
from monai_unet2.data.modality import dicom_modality
from monai_unet2.transforms import CheckModalityd, SafeLoadImaged

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
MR_NIFTI = BUNDLE / "sample_data" / "imagesTr" / "hippocampus_004.nii.gz"
CT20 = ROOT / "tests" / "data" / "dicom" / "totalseg_ct20" / "ct"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _metadata(modality: str | None = None) -> dict:
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    if modality is not None:
        metadata = copy.deepcopy(metadata)
        metadata["network_data_format"]["inputs"]["image"]["modality"] = modality
        del metadata["network_data_format"]["inputs"]["image"]["body_part_examined"]
    return metadata


def _load(path: Path | str) -> dict:
    loader = SafeLoadImaged("image", image_only=True, reader="monai_unet2.data.DicomSeriesReader")
    return loader({"image": str(path)})


def _mr_series(folder: Path, body_part: str = "BRAIN") -> Path:
    """The hippocampus sample as an MR series: one MR Image Storage file per axial slice, same voxels and geometry."""
    image = nib.load(MR_NIFTI)
    voxels = np.rint(np.asarray(image.dataobj)).astype(np.uint16)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    for k in range(voxels.shape[2]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.BodyPartExamined, ds.SeriesNumber, ds.InstanceNumber = "MR", body_part, 7, k + 1
        ds.PatientID, ds.PatientName = "hippocampus_004", "Anonymous"
        ds.ImageOrientationPatient = [float(v) for v in (*lps[:3, 0] / spacing[0], *lps[:3, 1] / spacing[1])]
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = voxels.shape[1], voxels.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(voxels[:, :, k].T).tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def ct_nifti(tmp_path_factory) -> Path:
    ct = LoadImage(reader=DicomSeriesReader(), image_only=True)(str(CT20))
    path = tmp_path_factory.mktemp("ct") / "ct20.nii.gz"
    nib.save(nib.Nifti1Image(ct.numpy().astype(np.int16), np.asarray(ct.affine)), path)
    return path


def test_the_mr_bundle_refuses_a_ct_series_in_one_line_and_force_lets_it_through(caplog):
    data = _load(CT20)
    with pytest.raises(ModalityMismatchError) as refused:
        CheckModalityd("image", bundle_metadata=_metadata())(data)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{CT20}: DICOM Modality CT")
    assert "trained on MR" in message and "--force_modality True" in message
    with caplog.at_level(logging.WARNING):
        CheckModalityd("image", bundle_metadata=_metadata(), force=True)(data)
    assert any("Modality CT" in r.getMessage() and "anyway" in r.getMessage() for r in caplog.records)


def test_a_ct_declared_bundle_refuses_an_mr_series_and_the_mr_bundle_takes_it(tmp_path):
    series = _mr_series(tmp_path / "mr")
    data = _load(series)
    np.testing.assert_array_equal(data["image"].numpy(), np.rint(nib.load(MR_NIFTI).get_fdata()))  # same voxels
    np.testing.assert_allclose(data["image"].affine.numpy(), nib.load(MR_NIFTI).affine, atol=1e-4)  # same place
    with pytest.raises(ModalityMismatchError, match=r"DICOM Modality MR, but this model was trained on CT"):
        CheckModalityd("image", bundle_metadata=_metadata("CT"))(data)
    assert CheckModalityd("image", bundle_metadata=_metadata())(data)["image"] is data["image"]


def test_body_part_is_compared_when_declared_and_present(tmp_path):
    knee = _load(_mr_series(tmp_path / "knee", body_part="KNEE"))
    with pytest.raises(
        ModalityMismatchError, match=r"BodyPartExamined KNEE, but this model segments BRAIN/HEAD/HEADNECK"
    ):
        CheckModalityd("image", bundle_metadata=_metadata())(knee)
    CheckModalityd("image", bundle_metadata=_metadata(), body_parts=["KNEE"])(knee)
    CheckModalityd("image", bundle_metadata=_metadata("MR"))(knee)  # no body part declared: any
    CheckModalityd("image", bundle_metadata=_metadata())(_load(_mr_series(tmp_path / "blank", body_part="")))


def test_nifti_intensities_warn_only_when_they_look_like_the_other_modality(ct_nifti, caplog):
    ct, mr = _load(ct_nifti), _load(MR_NIFTI)
    for metadata, data, warned in [
        (_metadata(), ct, "looks like a CT in Hounsfield units, but this model was trained on MR"),
        (_metadata(), mr, None),
        (_metadata("CT"), mr, "no air (lowest value 0"),
        (_metadata("CT"), ct, None),
    ]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            CheckModalityd("image", bundle_metadata=metadata)(data)  # never refused: NIfTI has no modality
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if warned is None:
            assert messages == []
        else:
            assert (
                len(messages) == 1
                and warned in messages[0]
                and str(data["image"].meta["filename_or_obj"]) in messages[0]
            )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        CheckModalityd("image", modality="color fundus photography")(ct)  # not a modality the guard checks
    assert caplog.records == []


def test_declared_modalities_map_to_dicom_codes():
    assert [dicom_modality(m) for m in ("MR", "MRI", "T1w", "t1gd", "FLAIR", "ADC", "T2")] == ["MR"] * 7
    assert [dicom_modality(m) for m in ("CT", "ct", "PET")] == ["CT", "CT", "PT"]
    assert dicom_modality("color fundus photography") is None and dicom_modality("") is None


@pytest.mark.integration
def test_bundle_run_refuses_a_ct_with_the_reason_as_the_error(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from monailabel_utils import cropped_series, series_with_uids

    series_with_uids(CT20, tmp_path / "full", patient_id="CT20")  # the committed files have empty UIDs
    cropped_series(tmp_path / "full", tmp_path / "inputs" / "ct", first_row=200, first_column=200, size=32)
    argv = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(BUNDLE / "configs" / "inference.json"),
        "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
        "--bundle_root", str(BUNDLE),
        "--dataset_dir", str(tmp_path / "inputs"),
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"{tmp_path / 'inputs' / 'ct'}: DICOM Modality CT, but this model was trained on MR" in output
    assert not list((tmp_path / "out").glob("*_seg*"))
    (log,) = (tmp_path / "out" / "logs").glob("*.log")  # the complete log holds the refusal with its traceback
    assert "ModalityMismatchError" in log.read_text() and "Traceback" in log.read_text()
