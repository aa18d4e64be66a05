"""DicomSeriesReader and DICOM SEG decoding on the committed real DICOM (tests/data/dicom), plus broken copies of it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImage, LoadImaged, SpatialResample
from pydicom.uid import generate_uid

from monai_unet2.data import (
    DicomSegError,
    DicomSeriesError,
    DicomSeriesReader,
    dicom_files,
    header_voxel_count,
    inference_datalist,
    seg_to_grid,
)
from monai_unet2.data.dicom_geometry import place_frame, world_to_voxel
from monai_unet2.data.dicom_seg import read_source_slices
from monai_unet2.transforms import LoadDicomSegd

DATA = Path(__file__).resolve().parent / "data" / "dicom"
CT20 = DATA / "totalseg_ct20" / "ct"
CT3 = DATA / "dcmqi_ct3slice" / "ct"
SEG_DIR = DATA / "dcmqi_ct3slice" / "seg"
CT20_FILES = sorted(CT20.glob("*.dcm"))


def _load(path, **kwargs):
    return LoadImage(reader=DicomSeriesReader(**kwargs), ensure_channel_first=True)(str(path))


def _sitk_ras_affine(image: sitk.Image) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return orientation_ras_lps(affine)


def _sitk_series(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.fixture(scope="module")
def ct20():
    return _load(CT20)


def _write_series(folder: Path, edit=None, names=None, files=CT20_FILES) -> list[Path]:
    """Copy the 20-slice CT into ``folder``; ``edit(index, ds)`` may change a slice (return False to drop it)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, source in enumerate(files):
        target = folder / (names[index] if names else source.name)
        if edit is None:
            shutil.copy(source, target)
        else:
            ds = pydicom.dcmread(source)
            if edit(index, ds) is False:
                continue
            ds.save_as(target)
        written.append(target)
    return written


def _set_series_uid(index, ds, uid="1.2.826.0.1.3680043.8.498.1"):
    ds.SeriesInstanceUID = uid


# ---- geometry and values against SimpleITK and the model segmentation ------------------------------------------


def test_totalseg_matches_simpleitk_geometry_and_values(ct20):
    reference = _sitk_series(CT20)
    assert ct20.shape == (1, 512, 512, 20)
    np.testing.assert_allclose(ct20.affine.numpy(), _sitk_ras_affine(reference), atol=1e-4)
    np.testing.assert_array_equal(ct20[0].numpy(), sitk.GetArrayFromImage(reference).transpose(2, 1, 0))
    assert ct20.meta["space"] == "RAS" and tuple(ct20.meta["spatial_shape"]) == (512, 512, 20)
    np.testing.assert_allclose(ct20.meta["spacing"], [0.9765625, 0.9765625, 2.0])
    np.testing.assert_allclose(ct20.meta["original_affine"], ct20.affine.numpy())
    assert ct20.meta["filename_or_obj"] == str(CT20)
    assert float(ct20.min()) == -1024.0  # RescaleIntercept applied (stored values start at 0)


def test_reader_resolves_from_dotted_path_in_loadimaged():
    out = LoadImaged("image", reader="monai_unet2.data.DicomSeriesReader", image_only=True)({"image": str(CT3)})
    assert out["image"].shape == (512, 512, 3)
    np.testing.assert_allclose(out["image"].affine.numpy(), _sitk_ras_affine(_sitk_series(CT3)), atol=1e-4)


def test_model_segmentation_maps_onto_ct_through_physical_space(ct20):
    seg = LoadImage(ensure_channel_first=True)(
        str(DATA / "totalseg_ct20" / "model_seg_NOT_GT" / "example_seg_dicom.nii.gz")
    )
    labelled = torch.nonzero(seg[0] > 0).numpy()
    assert len(labelled) == 739_420
    voxel_to_ct = np.linalg.inv(ct20.affine.numpy()) @ seg.affine.numpy()
    ct_index = voxel_to_ct[:3, :3] @ labelled.T + voxel_to_ct[:3, 3:4]
    np.testing.assert_allclose(ct_index, np.round(ct_index), atol=1e-3)  # same grid, only permuted
    ct_index = np.round(ct_index).astype(int)
    assert ((ct_index >= 0) & (ct_index < np.array(ct20.shape[1:])[:, None])).all()  # every voxel inside the CT
    assert len(np.unique(ct_index, axis=1).T) == 739_420  # one labelled voxel per CT voxel: the grids match

    resampled = SpatialResample(mode="nearest", padding_mode="zeros")(
        seg, dst_affine=ct20.affine, spatial_size=ct20.shape[1:]
    )
    assert int((resampled > 0).sum()) == 739_420
    torch.testing.assert_close(resampled[0], torch.flip(seg[0], dims=[1]))  # stored with y flipped
    organs = ct20[0][resampled[0] > 0].mean().item()
    index_aligned = ct20[0][seg[0] > 0].mean().item()
    assert 0 < organs < 200 and index_aligned < -100  # organs are soft tissue only through the affines


def test_oblique_series_matches_simpleitk(tmp_path):
    angle = np.deg2rad(20)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])

    def rotate(index, ds):
        iop = np.asarray(ds.ImageOrientationPatient, float)
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in np.concatenate([rotation @ iop[:3], rotation @ iop[3:]])]
        ds.ImagePositionPatient = [f"{v:.8f}" for v in rotation @ np.asarray(ds.ImagePositionPatient, float)]

    _write_series(tmp_path, rotate)
    ours = _load(tmp_path)
    np.testing.assert_allclose(ours.affine.numpy(), _sitk_ras_affine(_sitk_series(tmp_path)), atol=1e-4)
    original = _load(CT20)
    expected = orientation_ras_lps(
        np.block([[rotation, np.zeros((3, 1))], [np.zeros((1, 3)), 1]]) @ orientation_ras_lps(original.affine.numpy())
    )
    np.testing.assert_allclose(ours.affine.numpy(), expected, atol=1e-4)


def test_every_slice_lies_on_the_grid_the_reader_built(ct20):
    """The frame geometry shared by SEG reading and writing, applied to the series' own slices against the affine
    the reader built: slice k starts at voxel (0, 0, k) and steps one voxel along x per column, along y per row."""
    to_voxel = world_to_voxel(ct20.affine.numpy())
    uids = ct20.meta["sop_instance_uids"].split("\\")
    headers = {str(ds.SOPInstanceUID): ds for ds in read_source_slices(CT20)}  # the SEG writer's view of them
    assert len(headers) == len(uids) == 20
    for k, uid in enumerate(uids):
        ds = headers[uid]
        placement = place_frame(to_voxel, ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing)
        assert placement.on_grid(int(ds.Rows), int(ds.Columns), tolerance=1e-3)
        np.testing.assert_allclose(placement.origin, [0, 0, k], atol=1e-4)
        np.testing.assert_allclose(placement.column_step, [1, 0, 0], atol=1e-6)
        np.testing.assert_allclose(placement.row_step, [0, 1, 0], atol=1e-6)
        corners = placement.voxels(np.array([0, 511]), np.array([0, 511]))
        assert corners.T.tolist() == [[0, 0, k], [511, 511, k]]
    shifted = place_frame(
        to_voxel,
        np.asarray(headers[uids[0]].ImagePositionPatient, float) + np.array([0.3, 0, 0]),
        headers[uids[0]].ImageOrientationPatient,
        headers[uids[0]].PixelSpacing,
    )
    assert not shifted.on_grid(512, 512, tolerance=0.1)  # 0.3 mm = 0.31 voxel off


def test_one_folder_scanner_for_reader_memory_guard_and_datalist(tmp_path):
    series = tmp_path / "series"
    _write_series(series, files=sorted(CT3.glob("*.dcm")))
    shutil.copy(sorted(CT3.glob("*.dcm"))[0], series / "no_suffix")  # DICOM preamble, no .dcm suffix
    shutil.copy(sorted(CT3.glob("*.dcm"))[1], series / ".hidden.dcm")
    shutil.copy(sorted(CT3.glob("*.dcm"))[2], series / "DICOMDIR")
    (series / "notes.txt").write_text("not an image")
    (series / "sub").mkdir()
    found = [Path(path).name for path in dicom_files(series)]
    assert found == [*sorted(p.name for p in CT3.glob("*.dcm")), "no_suffix"]
    assert header_voxel_count(series) == 512 * 512 * 4
    assert _load(series).shape == (1, 512, 512, 3)  # no_suffix is read too: an identical copy, read once
    (series / "no_suffix").unlink()
    assert header_voxel_count(series) == 512 * 512 * 3 and _load(series).shape == (1, 512, 512, 3)
    (tmp_path / "text_only").mkdir()
    (tmp_path / "text_only" / "notes.txt").write_text("not an image")
    assert [Path(e["image"]).name for e in inference_datalist(tmp_path)] == ["series"]


# ---- DICOM SEG ------------------------------------------------------------------------------------------------------


def test_liver_seg_matches_nrrd_voxel_for_voxel():
    ct = _load(CT3)
    channels, segments = seg_to_grid(str(SEG_DIR / "liver_SEG.dcm"), ct.affine, ct.shape[1:])
    assert [s["label"] for s in segments] == ["Liver"] and channels.shape == (1, 512, 512, 3)
    nrrd = sitk.ReadImage(str(DATA / "dcmqi_ct3slice" / "nrrd" / "liver_seg.nrrd"))
    nrrd_array = torch.as_tensor(sitk.GetArrayFromImage(nrrd).transpose(2, 1, 0)[None].astype(np.float32))
    from monai.data import MetaTensor

    on_ct = SpatialResample(mode="nearest")(
        MetaTensor(nrrd_array, affine=torch.as_tensor(_sitk_ras_affine(nrrd))),
        dst_affine=ct.affine,
        spatial_size=ct.shape[1:],
    )
    assert int(on_ct.sum()) == 107_098
    np.testing.assert_array_equal(channels[0], on_ct[0].numpy().astype(np.uint8))


def test_partial_overlaps_one_channel_per_segment_on_referenced_slices():
    ct = _load(CT3)
    path = SEG_DIR / "partial_overlaps_SEG.dcm"
    channels, segments = seg_to_grid(str(path), ct.affine, ct.shape[1:])
    assert [s["label"] for s in segments] == ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]
    assert channels.shape == (5, 512, 512, 3)
    assert int((channels.sum(axis=0) > 1).sum()) > 0  # overlaps are kept
    # independent check through the SEG's references: each frame lands on the CT slice it references
    seg = pydicom.dcmread(path)
    slice_of_uid = {uid: k for k, uid in enumerate(ct.meta["sop_instance_uids"].split("\\"))}
    expected = np.zeros_like(channels)
    for frame, group in zip(seg.pixel_array, seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        expected[number - 1, :, :, slice_of_uid[uid]] |= frame.T.astype(np.uint8)
    np.testing.assert_array_equal(channels, expected)
    assert channels.reshape(5, -1).sum(axis=1).tolist() == [9602, 11888, 10743, 6693, 4713]


def test_load_dicom_segd_channels_and_labelmap():
    data = LoadImaged("image", reader=DicomSeriesReader(), ensure_channel_first=True)({"image": str(CT3)})
    data["liver"] = str(SEG_DIR / "liver_SEG.dcm")
    data["parts"] = str(SEG_DIR / "partial_overlaps_SEG.dcm")
    out = LoadDicomSegd("liver", labelmap=True)(data)
    assert out["liver"].shape == (1, 512, 512, 3) and int(out["liver"].sum()) == 107_098
    torch.testing.assert_close(out["liver"].affine, data["image"].affine)
    out = LoadDicomSegd("parts")(data)
    assert out["parts"].shape[0] == 5 and out["parts"].meta["segment_labels"].split("\\")[0] == "GREEN"
    with pytest.raises(DicomSegError, match="belong to several segments"):
        LoadDicomSegd("parts", labelmap=True)(data)


def test_seg_off_the_grid_and_not_a_seg_are_refused(ct20):
    with pytest.raises(DicomSegError, match="does not lie on the reference grid"):
        seg_to_grid(str(SEG_DIR / "liver_SEG.dcm"), ct20.affine, ct20.shape[1:])
    with pytest.raises(DicomSegError, match="is not a DICOM SEG"):
        seg_to_grid(str(CT20_FILES[0]), ct20.affine, ct20.shape[1:])


# ---- broken series ------------------------------------------------------------------------------------------------


def test_missing_slices_are_reported_as_gaps(tmp_path):
    _write_series(tmp_path / "one", lambda i, ds: (_set_series_uid(i, ds), i != 7)[1])
    with pytest.raises(
        DicomSeriesError,
        match=r"series 1\.2\.826\.0\.1\.3680043\.8\.498\.1 has a gap of 1 slice between z=-782\.5 and z=-778\.5",
    ):
        _load(tmp_path / "one")
    _write_series(tmp_path / "two", lambda i, ds: i not in (7, 8))
    with pytest.raises(DicomSeriesError, match=r"gap of 2 slices between z=-784\.5 and z=-778\.5") as error:
        _load(tmp_path / "two")
    assert str(tmp_path / "two") in str(error.value)


def test_duplicated_slice_refused_unless_allowed(tmp_path, ct20):
    _write_series(tmp_path)
    ds = pydicom.dcmread(CT20_FILES[5])
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 999
    ds.save_as(tmp_path / "copy_of_slice.dcm")
    with pytest.raises(
        DicomSeriesError,
        match=r"1 duplicated slice position\(s\) holding different instances: z=-776\.5: .*copy_of_slice\.dcm",
    ):
        _load(tmp_path)
    kept = _load(tmp_path, allow_duplicates="first")
    torch.testing.assert_close(kept, ct20)
    assert "copy_of_slice" not in str(kept.meta["sop_instance_uids"])


def test_truncated_and_corrupt_files(tmp_path):
    _write_series(tmp_path)
    victim = tmp_path / CT20_FILES[7].name
    victim.write_bytes(victim.read_bytes()[:60_000])
    with pytest.raises(DicomSeriesError, match=rf"file .*{victim.name} is truncated"):
        _load(tmp_path)
    with pytest.raises(DicomSeriesError, match="has a gap of 1 slice"):  # skipping it leaves a detectable hole
        _load(tmp_path, on_unreadable="skip")
    victim.write_bytes(CT20_FILES[7].read_bytes()[:500])  # cut inside the header
    with pytest.raises(DicomSeriesError, match=rf"{victim.name} is an image object without pixel data"):
        _load(tmp_path)
    victim.write_bytes(b"\x00" * 100 + b"not dicom at all" * 50)
    with pytest.raises(
        DicomSeriesError, match=rf"{victim.name} is not DICOM: it is binary data of no known image format"
    ):
        _load(tmp_path)


def test_two_series_in_one_folder(tmp_path, caplog):
    _write_series(tmp_path, _set_series_uid)
    other = "1.2.826.0.1.3680043.8.498.2"

    def second_series(index, ds):
        ds.SeriesInstanceUID, ds.SOPInstanceUID = other, generate_uid()
        return index < 5

    _write_series(tmp_path, second_series, names=[f"other_{i}.dcm" for i in range(20)])
    with caplog.at_level(logging.INFO, logger="monai_unet2"):
        picked = _load(tmp_path)
    assert picked.shape[-1] == 20
    assert "picked series 1.2.826.0.1.3680043.8.498.1 (20 slices) out of 2 series" in caplog.text
    assert _load(tmp_path, series_uid=other).shape[-1] == 5
    with pytest.raises(
        DicomSeriesError, match=r"has no series 9\.9; it holds series .*\(20 slices\), series .*\(5 slices\)"
    ):
        _load(tmp_path, series_uid="9.9")


def test_shuffled_file_names_load_identically(tmp_path, ct20):
    names = [f"{n:03d}.dcm" for n in np.random.default_rng(0).permutation(20)]
    _write_series(tmp_path, names=names)
    shuffled = _load(tmp_path)
    torch.testing.assert_close(shuffled, ct20)
    torch.testing.assert_close(shuffled.affine, ct20.affine)


def test_seg_object_in_folder_is_skipped(tmp_path, caplog):
    _write_series(tmp_path, files=sorted(CT3.glob("*.dcm")))
    shutil.copy(SEG_DIR / "liver_SEG.dcm", tmp_path / "liver_SEG.dcm")
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO, logger="monai_unet2"):
        loaded = _load(tmp_path)
    torch.testing.assert_close(loaded, _load(CT3))
    assert "skipping liver_SEG.dcm: a non-image object (Modality SEG)" in caplog.text
    assert "ignoring notes.txt (not a DICOM file)" in caplog.text


def test_changing_raster_spacing_orientation_are_refused(tmp_path):
    def rows(i, ds):
        if i == 3:
            ds.Rows = ds.Columns = 256

    def spacing(i, ds):
        if i == 4:
            ds.PixelSpacing = [0.8, 0.8]

    def orientation(i, ds):
        if i == 5:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9998, 0.02]

    for name, edit, message in [
        (
            "rows",
            rows,
            r"Rows/Columns changes within the series: \(512, 512\) in 19 files, different in 1: .*\(256, 256\)",
        ),
        ("spacing", spacing, r"PixelSpacing changes within the series"),
        ("orientation", orientation, r"ImageOrientationPatient changes within the series"),
    ]:
        _write_series(tmp_path / name, edit)
        with pytest.raises(DicomSeriesError, match=message):
            _load(tmp_path / name)


def test_inconsistent_spacing_refused_unless_tolerated(tmp_path):
    def shift(i, ds):
        if i == 10:
            position = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [*position[:2], position[2] + 0.5]

    _write_series(tmp_path, shift)
    with pytest.raises(
        DicomSeriesError,
        match=r"inconsistent slice spacing: median step 2\.0 mm but z=-788\.5 to z=-786\.0 \(2\.5 mm\)",
    ):
        _load(tmp_path)
    tolerated = _load(tmp_path, spacing_tolerance=0.3)
    assert tolerated.shape[-1] == 20 and abs(float(tolerated.affine[2, 2]) - 2.0) < 1e-6


def test_gantry_tilt_refused_unless_allowed(tmp_path):
    def tilt(i, ds):
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1] + 0.3 * (position[2] + 766.5), position[2]]

    _write_series(tmp_path, tilt)
    with pytest.raises(DicomSeriesError, match="gantry tilt"):
        _load(tmp_path)
    tilted = _load(tmp_path, allow_gantry_tilt=True)
    lps = orientation_ras_lps(tilted.affine.numpy())
    for k, path in enumerate(sorted(tmp_path.glob("*.dcm"), key=lambda p: -int(p.stem.split(".")[-1]))):
        np.testing.assert_allclose(
            lps @ [0, 0, k, 1], [*map(float, pydicom.dcmread(path).ImagePositionPatient), 1], atol=1e-4
        )


def test_undecodable_transfer_syntax_is_named(tmp_path):
    def relabel(i, ds):
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"

    _write_series(tmp_path, relabel)
    with pytest.raises(
        DicomSeriesError,
        match=r"transfer syntax 1\.2\.840\.10008\.1\.2\.4\.92 .*none of the installed pydicom decoders",
    ):
        _load(tmp_path)


def test_empty_folder_and_non_image_only_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomSeriesError, match="holds no image slices"):
        _load(tmp_path / "empty")
    (tmp_path / "seg").mkdir()
    shutil.copy(SEG_DIR / "liver_SEG.dcm", tmp_path / "seg" / "a.dcm")
    with pytest.raises(DicomSeriesError, match=r"no image slices \(1 DICOM files; skipped: a\.dcm \(a non-image"):
        _load(tmp_path / "seg")


def test_several_folders_become_channels_on_one_grid(tmp_path):
    _write_series(tmp_path, files=sorted(CT3.glob("*.dcm")))
    both = LoadImage(reader=DicomSeriesReader(), ensure_channel_first=True)([str(CT3), str(tmp_path)])
    assert both.shape == (2, 512, 512, 3)
    torch.testing.assert_close(both[0], both[1])
    with pytest.raises(DicomSeriesError, match="does not share the grid of"):
        LoadImage(reader=DicomSeriesReader())([str(CT3), str(CT20)])
