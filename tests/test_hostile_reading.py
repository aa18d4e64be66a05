"""Hostile volume files made from the committed hippocampus samples: read by content, checked from the header, each
read correctly (with numbers) or refused in one line that names the file and the problem."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, Orientationd, Spacingd

from monai_unet2.data import VolumeFileError, available_memory, memory_refusal
from monai_unet2.data.affines import resampled_voxel_count
from monai_unet2.data.file_kinds import sniff
from monai_unet2.transforms import CheckVolumed, SafeLoadImaged

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation" / "sample_data" / "imagesTr"
CASE = SAMPLE / "hippocampus_004.nii.gz"
CT3_SLICE = ROOT / "tests" / "data" / "dicom" / "dcmqi_ct3slice" / "ct" / "01.dcm"
INFERENCE_READER = "monai_unet2.data.DicomSeriesReader"  # what the hippocampus inference config registers


@pytest.fixture(scope="module")
def volume():
    image = nib.load(CASE)
    return np.asarray(image.dataobj), image.affine


def refusal(path: Path, **kwargs) -> str:
    with pytest.raises(VolumeFileError) as caught:
        SafeLoadImaged("image", reader=INFERENCE_READER, **kwargs)({"image": str(path)})
    return str(caught.value)


def test_nifti_is_read_by_nibabel_without_trying_the_dicom_reader_first(caplog, volume):
    with caplog.at_level(logging.DEBUG):
        image = SafeLoadImaged("image", reader=INFERENCE_READER)({"image": str(CASE)})["image"]
    assert "unable to load" not in caplog.text and "DicomSeriesReader" not in caplog.text
    np.testing.assert_array_equal(image.numpy(), volume[0].astype(np.float32))
    assert sniff(CASE).kind == "nifti1_gz"


def test_monai_label_style_loader_returns_image_and_metadata(volume):
    """MONAI Label's bundle task sets ``_loader.image_only = False`` on every LoadImaged of a bundle's pipeline."""
    load = SafeLoadImaged("image", reader=INFERENCE_READER)
    load._loader.image_only = False
    data = load({"image": str(CASE)})
    np.testing.assert_array_equal(data["image"].numpy(), volume[0])
    assert data["image_meta_dict"]["filename_or_obj"] == str(CASE)


def test_names_and_contents_that_disagree(tmp_path, volume):
    text = tmp_path / "notes.nii.gz"
    text.write_text("patient list, not an image\n")
    assert refusal(text) == f"{text}: cannot read image (a text file (starting 'patient list, not an image'))"
    gzip_named_nii = tmp_path / "compressed.nii"
    shutil.copy(CASE, gzip_named_nii)
    assert refusal(gzip_named_nii) == (
        f"{gzip_named_nii}: cannot read image (it holds gzip-compressed NIfTI-1 but is named without .gz: rename it "
        "to end in .nii.gz)"
    )
    plain_named_gz = tmp_path / "plain.nii.gz"
    plain_named_gz.write_bytes(gzip.decompress(CASE.read_bytes()))
    assert refusal(plain_named_gz) == (
        f"{plain_named_gz}: cannot read image (it holds uncompressed NIfTI-1 but is named .gz: rename it without .gz)"
    )
    png_named_nii = tmp_path / "photo.nii.gz"
    png_named_nii.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert refusal(png_named_nii) == (
        f"{png_named_nii}: cannot read image (it is a PNG image, not the NIfTI file its name says)"
    )
    gzip_text = tmp_path / "log.nii.gz"
    gzip_text.write_bytes(gzip.compress(b"training log\n"))
    assert refusal(gzip_text) == f"{gzip_text}: cannot read image (gzip-compressed text file (starting 'training log'))"


def test_empty_file_folder_named_like_a_file_broken_link_and_unknown_bytes(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    assert refusal(empty) == f"{empty}: cannot read image (an empty file (0 bytes))"
    folder = tmp_path / "case.nii.gz"
    folder.mkdir()
    assert refusal(folder) == f"{folder}: cannot read image (a folder without DICOM files)"
    link = tmp_path / "gone.nii.gz"
    link.symlink_to(tmp_path / "deleted.nii.gz")
    assert refusal(link) == f"{link}: cannot read image (a broken symbolic link to {tmp_path / 'deleted.nii.gz'})"
    binary = tmp_path / "random.nii"
    binary.write_bytes(bytes(range(7, 256)) * 2)
    assert refusal(binary).startswith(f"{binary}: cannot read image (binary data of no known image format")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_named(tmp_path):
    locked = tmp_path / "locked.nii.gz"
    shutil.copy(CASE, locked)
    locked.chmod(0)
    assert refusal(locked) == f"{locked}: cannot read image (not readable (permission denied))"


def test_complex_and_rgb_voxels_are_refused(tmp_path, volume):
    array, affine = volume
    complex_file = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(array.astype(np.complex64) * (1 + 1j), affine), complex_file)
    assert refusal(complex_file) == (
        f"{complex_file}: its voxels are complex (complex64); reading it as real intensities would drop the imaginary "
        "part: store the magnitude (or the real and imaginary parts as separate files)"
    )
    rgb = np.zeros(array.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb_file = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, affine), rgb_file)
    assert refusal(rgb_file).startswith(f"{rgb_file}: its voxels are ('R', 'G', 'B') records (e.g. RGB)")


def test_qform_and_sform_50_mm_apart_warn_with_the_distance(tmp_path, volume, caplog):
    array, affine = volume
    path = tmp_path / "disagree.nii.gz"
    image = nib.Nifti1Image(array, affine)
    moved = affine.copy()
    moved[:3, 3] += [30.0, 40.0, 0.0]
    image.set_qform(affine, code=1)
    image.set_sform(moved, code=1)
    nib.save(image, path)
    with caplog.at_level(logging.WARNING, logger="monai_unet2"):
        loaded = SafeLoadImaged("image")({"image": str(path)})["image"]
    assert f"{path}: qform and sform disagree: they place the same voxel up to 50 mm apart; the sform is used" in (
        caplog.text
    )
    np.testing.assert_allclose(loaded.affine.numpy(), moved)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_unet2"):
        SafeLoadImaged("image")({"image": str(CASE)})
    assert "disagree" not in caplog.text


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda a: a.__setitem__((slice(None), 1), 0), "its affine gives voxel axis 1 a length of 0 mm (a zero column"),
        (lambda a: a.__setitem__((0, 3), np.nan), "its affine holds NaN or infinite values"),
        (lambda a: a.__setitem__((slice(0, 3), 2), a[:3, 0]), "its affine maps the voxel axes onto a plane or a line"),
    ],
)
def test_affine_that_is_no_grid_is_refused_by_name(tmp_path, volume, edit, expected):
    array, affine = volume
    broken = affine.copy()
    edit(broken)
    path = tmp_path / "broken_affine.nii.gz"
    image = nib.Nifti1Image(array, None)
    image.set_sform(broken, code=1)
    image.set_qform(None, code=0)
    nib.save(image, path)
    message = refusal(path)
    assert message.startswith(f"{path}: {expected}")


def _with_scaling(path: Path, array: np.ndarray, affine: np.ndarray, slope: float, intercept: float) -> Path:
    """Stored int8 values with a header scaling written as given (nibabel's save would recompute it)."""
    nib.save(nib.Nifti1Image(array, affine), path)
    raw = gzip.decompress(path.read_bytes())
    header = nib.Nifti1Header(raw[:348])
    header["scl_slope"], header["scl_inter"] = slope, intercept
    path.write_bytes(gzip.compress(header.binaryblock + raw[348:]))
    return path


def test_scaling_that_overflows_float32_is_named_as_such(tmp_path, volume):
    array, affine = volume
    stored = np.clip(array / 20, -128, 127).astype(np.int8)
    low, high = int(stored.min()), int(stored.max())
    path = _with_scaling(tmp_path / "int8_huge_slope.nii.gz", stored, affine, 1e37, 0)
    message = refusal(path)
    assert message.startswith(
        f"{path}: scl_slope 1e+37 and scl_inter 0 scale its stored int8 values ({low}..{high}) to "
        f"{low * 1e37:.3g}..{high * 1e37:.3g}, beyond the float32 range"
    )
    assert "the file holds no Inf" in message
    scaled = _with_scaling(tmp_path / "int8_slope_2.nii.gz", stored, affine, 2.0, -3.0)
    loaded = SafeLoadImaged("image")({"image": str(scaled)})["image"]  # ordinary scaling: applied value for value
    np.testing.assert_array_equal(loaded.numpy(), stored.astype(np.float32) * 2 - 3)


def test_4d_time_series_is_refused_after_loading(tmp_path, volume):
    array, affine = volume
    path = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([array] * 5, axis=-1), affine), path)
    data = EnsureChannelFirstd("image")(SafeLoadImaged("image")({"image": str(path)}))
    with pytest.raises(VolumeFileError, match=r"expected 1 channel\(s\), got 5 .*a 4D file \(time series"):
        CheckVolumed("image", label_key=None)(data)


def test_resampled_size_matches_what_spacingd_makes(volume):
    array, affine = volume
    for zooms, target in (((2.0, 3.0, 0.5), (1.0, 1.0, 1.0)), ((40.0, 40.0, 40.0), (7.0, 9.0, 13.0))):
        stretched = affine @ np.diag([*zooms, 1.0])
        image = MetaTensor(torch.as_tensor(array[None, :8, :9, :10].astype(np.float32)), affine=stretched)
        made = Spacingd("image", pixdim=target)(Orientationd("image", axcodes="RAS")({"image": image}))["image"]
        assert resampled_voxel_count((8, 9, 10), stretched, target) == int(np.prod(made.shape[1:]))


def test_memory_guard_judges_the_size_after_resampling(tmp_path, volume):
    array, affine = volume
    path = tmp_path / "forty_mm_voxels.nii.gz"
    nib.save(nib.Nifti1Image(array, affine @ np.diag([40.0, 40.0, 40.0, 1.0])), path)
    assert path.stat().st_size < 100_000
    assert memory_refusal(path) is None  # 71,136 stored voxels
    after = (35 * 40 + 1) * (51 * 40 + 1) * (37 * 40 + 1)  # Spacing's rule: (size - 1) * spacing / target + 1
    needed = after * 24
    assert needed > 0.8 * available_memory()
    message = refusal(path, target_spacing=[1.0, 1.0, 1.0])
    assert message.startswith(
        f"{path}: volume too large to process in one piece: {after:,} voxels (71,136 voxels of 40, 40, 40 mm "
        "resampled to 1, 1, 1 mm spacing)"
    )
    assert memory_refusal(path, target_spacing=40.0) is None


def test_single_slice_nifti_runs_through_the_bundle_inference(tmp_path, volume, caplog):
    """The bundle's own inference.json (read in this process): one slice of a real case is segmented and written
    with the input's shape and affine; before, the writer failed with a TypeError after the inference. The
    coronal and sagittal views cannot see a single slice as a plane: they are left out, and the user is told."""
    from monai.bundle import ConfigParser

    array, affine = volume
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(array[:, :, 19:20], affine), inputs / "one_slice.nii.gz")
    bundle = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser.update(
        {
            "bundle_root": str(bundle),
            "dataset_dir": str(inputs),
            "output_dir": str(tmp_path / "out"),
            "progress_bar": False,
        }
    )
    with caplog.at_level("WARNING", logger="monai_unet2.inferers.multi_view"):
        parser.get_parsed_content("evaluator").run()
    assert [record.getMessage().split(" (")[0] for record in caplog.records if record.name.endswith("multi_view")] == [
        f"{inputs / 'one_slice.nii.gz'}: view '{view}' left out of the fusion" for view in ("coronal", "sagittal")
    ]
    written = nib.load(tmp_path / "out" / "one_slice_seg.nii.gz")
    assert written.shape == (36, 52, 1)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    labels = np.asarray(written.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2} and int((labels > 0).sum()) > 10  # it found hippocampus in the slice


def test_uncompressed_header_promising_more_than_the_file_holds(tmp_path, volume):
    array, affine = volume
    path = tmp_path / "short.nii"
    nib.save(nib.Nifti1Image(array.astype(np.int16), affine), path)
    os.truncate(path, path.stat().st_size - 7)
    size = path.stat().st_size
    assert refusal(path) == (
        f"{path}: cannot read image (file shorter than its header says (truncated): {size:,} bytes, the header "
        f"needs {size + 7:,})"
    )


def test_negative_size_in_the_header_is_refused(tmp_path, volume):
    array, affine = volume
    path = tmp_path / "negative.nii"
    nib.save(nib.Nifti1Image(array, affine), path)
    raw = bytearray(path.read_bytes())
    raw[42:44] = np.int16(-5).tobytes()  # dim[1]
    path.write_bytes(bytes(raw))
    assert refusal(path) == f"{path}: its header declares a negative size, shape (-5, 52, 38)"


def test_hdr_img_pair_is_read_from_either_name_and_a_short_img_is_named(tmp_path, volume):
    array, affine = volume
    nib.save(nib.Nifti1Pair(array, affine), tmp_path / "pair.img")
    for name in ("pair.img", "pair.hdr"):
        image = SafeLoadImaged("image", reader=INFERENCE_READER)({"image": str(tmp_path / name)})["image"]
        np.testing.assert_array_equal(image.numpy(), array)
    os.truncate(tmp_path / "pair.img", 1000)
    assert refusal(tmp_path / "pair.hdr") == (
        f"{tmp_path / 'pair.hdr'}: cannot read image (data file {tmp_path / 'pair.img'} shorter than its header says "
        f"(truncated): 1,000 bytes, the header needs {array.size * 4:,})"
    )


def test_a_dicom_slice_given_as_a_file_is_read_as_dicom(tmp_path):
    renamed = tmp_path / "slice_without_suffix"
    shutil.copy(CT3_SLICE, renamed)
    image = SafeLoadImaged("image", reader=INFERENCE_READER)({"image": str(renamed)})["image"]
    assert tuple(image.shape) == (512, 512, 1) and float(image.min()) == -3024.0
