"""Bad NIfTI input, made from the committed hippocampus samples: each case gives an error naming the file and the
problem (or the documented tolerance), through SafeLoadImaged + EnsureChannelFirstd + CheckVolumed."""

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import EnsureChannelFirstd, LoadImaged

from monai_unet2.data import DicomSeriesReader, VolumeFileError
from monai_unet2.transforms import CheckVolumed, SafeLoadImaged
from monai_unet2.transforms.checks import grid_distance_mm

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
SAMPLE = BUNDLE / "sample_data"
CASE = "hippocampus_004.nii.gz"
DCMQI_CT = ROOT / "tests" / "data" / "dicom" / "dcmqi_ct3slice" / "ct"


@pytest.fixture
def pair(tmp_path):
    """A real image/label pair copied to tmp_path: (image path, label path, image array, label array, affine)."""
    image, label = tmp_path / "image.nii.gz", tmp_path / "label.nii.gz"
    shutil.copy(SAMPLE / "imagesTr" / CASE, image)
    shutil.copy(SAMPLE / "labelsTr" / CASE, label)
    image_nii, label_nii = nib.load(image), nib.load(label)
    return image, label, np.asarray(image_nii.dataobj), np.asarray(label_nii.dataobj), image_nii.affine


def load_and_check(data: dict, keys=("image", "label"), **check_args) -> dict:
    """The pipeline head the bundles use, applied step by step so the exception itself reaches the test."""
    check_args.setdefault("label_key", "label" if "label" in keys else None)
    data = SafeLoadImaged(keys, image_only=True)(data)
    data = EnsureChannelFirstd(keys)(data)
    return CheckVolumed(keys, **check_args)(data)


def refusal(data: dict, keys=("image", "label"), **check_args) -> str:
    with pytest.raises(VolumeFileError) as caught:
        load_and_check(data, keys, **check_args)
    return str(caught.value)


def test_all_committed_samples_pass_unchanged():
    for image in sorted((SAMPLE / "imagesTr").glob("*.nii.gz")):
        data = {"image": str(image), "label": str(SAMPLE / "labelsTr" / image.name)}
        checked = load_and_check(data, expected_labels=[0, 1, 2])
        plain = LoadImaged(("image", "label"), image_only=True)(data)
        assert torch.equal(checked["image"][0], plain["image"])
        assert torch.equal(checked["label"][0], plain["label"])
        assert set(torch.unique(checked["label"]).tolist()) <= {0, 1, 2}


def test_real_dicom_series_passes_the_checks():
    data = SafeLoadImaged("image", reader=DicomSeriesReader, image_only=True)({"image": str(DCMQI_CT)})
    data = CheckVolumed("image", label_key=None)(EnsureChannelFirstd("image")(data))
    assert data["image"].shape[0] == 1 and data["image"].ndim == 4


def test_truncated_nii_gz_names_the_file(pair, tmp_path):
    image, label, *_ = pair
    payload = image.read_bytes()
    image.write_bytes(payload[: len(payload) // 2])
    # Plain LoadImaged: an EOFError from gzip that does not say which file.
    with pytest.raises(EOFError) as bare:
        LoadImaged("image", image_only=True)({"image": str(image)})
    assert str(image) not in str(bare.value)
    message = refusal({"image": str(image), "label": str(label)})
    assert message.startswith(f"{image}: cannot read image (truncated or corrupt gzip data: EOFError")
    # The bundle's inference reader setup (DicomSeriesReader registered first) gives the same message.
    with pytest.raises(VolumeFileError, match="truncated or corrupt gzip data"):
        SafeLoadImaged("image", reader="monai_unet2.data.DicomSeriesReader")({"image": str(image)})


def test_truncated_uncompressed_nii_and_missing_file(pair, tmp_path):
    _, _, array, _, affine = pair
    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), plain)
    payload = plain.read_bytes()
    plain.write_bytes(payload[: len(payload) - 1000])
    message = refusal({"image": str(plain)}, keys=("image",))
    assert message.startswith(f"{plain}: cannot read image (file shorter than its header says (truncated)")
    missing = tmp_path / "missing.nii.gz"
    assert refusal({"image": str(missing)}, keys=("image",)) == f"{missing}: cannot read image (file not found)"


def test_header_only_gzip_is_not_an_image(tmp_path, pair):
    image, *_ = pair
    broken = tmp_path / "header_only.nii.gz"
    broken.write_bytes(gzip.compress(gzip.decompress(image.read_bytes())[:100]))
    message = refusal({"image": str(broken)}, keys=("image",))
    assert message == (
        f"{broken}: cannot read image (gzip-compressed NIfTI-1 header cut short: 100 of its 348 bytes (truncated))"
    )


def test_nan_and_inf_are_refused_or_zeroed_on_request(pair, tmp_path, caplog):
    image, label, array, _, affine = pair
    bad = array.astype(np.float32)
    bad[10, 20, 5:10] = np.nan
    bad[11, 21, 0:3] = np.inf
    bad[12, 22, 0] = -np.inf
    nib.save(nib.Nifti1Image(bad, affine), image)
    message = refusal({"image": str(image), "label": str(label)})
    assert message == (
        f"{image}: 5 NaN and 4 Inf voxels of {array.size}; fix the file or pass allow_nonfinite='zero' "
        "to replace them with 0"
    )
    with caplog.at_level(logging.WARNING, logger="monai_unet2.transforms.checks"):
        data = load_and_check({"image": str(image), "label": str(label)}, allow_nonfinite="zero")
    repaired = data["image"][0].numpy()
    assert repaired[10, 20, 5:10].tolist() == [0] * 5 and repaired[11, 21, 0:3].tolist() == [0] * 3
    assert repaired[12, 22, 0] == 0
    finite = np.isfinite(bad)
    np.testing.assert_array_equal(repaired[finite], bad[finite])
    assert f"{image}: 5 NaN and 4 Inf voxels" in caplog.text and "replaced by 0" in caplog.text
    assert data["image"].meta["filename_or_obj"] == str(image)


def test_4d_and_5d_files_where_3d_is_expected(pair, tmp_path):
    _, _, array, _, affine = pair
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([array, array, array], axis=-1), affine), four)
    message = refusal({"image": str(four)}, keys=("image",))
    assert message == (
        f"{four}: expected 1 channel(s), got 3 (channel-first array shape (3, 36, 52, 38)); a 4D file "
        "(time series or multi-component, 3 volumes) where a 3D volume is expected"
    )
    single = tmp_path / "single_frame.nii.gz"
    nib.save(nib.Nifti1Image(array[..., None], affine), single)
    assert load_and_check({"image": str(single)}, keys=("image",))["image"].shape == (1, 36, 52, 38)
    five = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([array, array], axis=-1)[..., None, :], affine), five)
    message = refusal({"image": str(five)}, keys=("image",))
    assert message.startswith(f"{five}: expected a 3D volume, got 4 spatial dimensions (channel-first array shape")


def test_zero_size_dimension(pair, tmp_path):
    _, _, array, _, affine = pair
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(array[:, :0, :], affine), empty)
    message = refusal({"image": str(empty)}, keys=("image",))
    assert message == f"{empty}: zero-size dimension, shape (36, 0, 38): the file holds no voxels"


def test_label_affine_shift_names_both_files_and_the_distance(pair):
    image, label, _, label_array, affine = pair
    shifted = affine.copy()
    shifted[0, 3] += 2.0
    nib.save(nib.Nifti1Image(label_array, shifted), label)
    message = refusal({"image": str(image), "label": str(label)})
    assert message == (
        f"{label} (label) and {image} (image) have different geometry: their affines place the same voxel "
        "up to 2 mm apart (tolerance 0.001 mm)"
    )
    assert load_and_check({"image": str(image), "label": str(label)}, affine_tolerance=2.5)["label"].ndim == 4
    within = affine.copy()
    within[1, 3] += 0.0005
    nib.save(nib.Nifti1Image(label_array, within), label)
    assert load_and_check({"image": str(image), "label": str(label)})["label"].shape == (1, 36, 52, 38)


def test_label_spacing_difference_is_measured_at_the_far_corner(pair):
    image, label, _, label_array, affine = pair
    stretched = affine.copy()
    stretched[2, 2] = 1.02
    nib.save(nib.Nifti1Image(label_array, stretched), label)
    message = refusal({"image": str(image), "label": str(label)})
    assert "up to 0.74 mm apart" in message  # 37 voxels along z x 0.02 mm
    assert refusal({"image": str(image), "label": str(label)}, affine_tolerance=0.7).endswith("(tolerance 0.7 mm)")
    assert load_and_check({"image": str(image), "label": str(label)}, affine_tolerance=0.75)["label"].ndim == 4


def test_label_of_another_shape(pair):
    image, label, _, label_array, affine = pair
    nib.save(nib.Nifti1Image(label_array[:, :, :-1], affine), label)
    message = refusal({"image": str(image), "label": str(label)})
    assert message == (
        f"{label} (label) and {image} (image) have different grids: spatial shape (36, 52, 37) vs (36, 52, 38)"
    )


def test_label_values_outside_the_expected_set(pair):
    image, label, _, label_array, affine = pair
    bad = label_array.copy()
    bad[0, 0, :4] = 7
    bad[1, 1, 0] = 255
    nib.save(nib.Nifti1Image(bad, affine), label)
    message = refusal({"image": str(image), "label": str(label)}, expected_labels=[0, 1, 2])
    assert message == f"{label}: label values outside the expected set {{0, 1, 2}}: 7 (4 voxels), 255 (1 voxels)"
    # Without an expected set the values are not checked.
    assert load_and_check({"image": str(image), "label": str(label)})["label"].max() == 255
    # An image given as the label: the count of values and the first five, not thousands.
    nib.save(nib.Nifti1Image(np.arange(label_array.size, dtype=np.int32).reshape(label_array.shape), affine), label)
    message = refusal({"image": str(image), "label": str(label)}, expected_labels=[0, 1, 2])
    assert message == (
        f"{label}: label values outside the expected set {{0, 1, 2}}: {label_array.size - 3} values, e.g. "
        "3 (1 voxels), 4 (1 voxels), 5 (1 voxels), 6 (1 voxels), 7 (1 voxels), ..."
    )


def test_grid_distance_mm_numbers():
    base = np.eye(4)
    moved = base.copy()
    moved[:3, 3] = [3.0, 4.0, 0.0]
    assert grid_distance_mm(base, moved, (10, 10, 10)) == pytest.approx(5.0)
    rotated = base.copy()
    rotated[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]  # 90 degrees about z: corner (9, 0, 0) moves to (0, 9, 0)
    assert grid_distance_mm(base, rotated, (10, 1, 1)) == pytest.approx(9 * np.sqrt(2))
    assert grid_distance_mm(np.eye(3), np.diag([1.0, 1.5, 1.0]), (5, 5)) == pytest.approx(2.0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="allow_nonfinite"):
        CheckVolumed("image", allow_nonfinite=True)
    with pytest.raises(ValueError, match="affine_tolerance"):
        CheckVolumed("image", affine_tolerance=-1)


@pytest.mark.slow
@pytest.mark.integration
def test_bundle_inference_with_the_checks_names_the_truncated_file(tmp_path):
    """The inference.json change proposed for the bundle, applied as command-line overrides."""
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    shutil.copy(SAMPLE / "imagesTr" / CASE, inputs / CASE)
    payload = (inputs / CASE).read_bytes()
    (inputs / CASE).write_bytes(payload[: len(payload) // 2])
    argv = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(BUNDLE / "configs" / "inference.json"),
        "--bundle_root",
        str(BUNDLE),
        "--dataset_dir",
        str(inputs),
        "--output_dir",
        str(outputs),
        "--preprocessing#transforms#0#_target_",
        "monai_unet2.transforms.io.SafeLoadImaged",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]  # the batch's list of failed inputs ends the output
    assert last.startswith(f"  {inputs / CASE}: cannot read image (truncated or corrupt gzip data"), output[-3000:]
    assert "Traceback" not in output
    assert not outputs.exists() or not any(outputs.rglob("*.nii.gz"))


def sparse_nifti(path: Path, shape: tuple[int, ...], dtype=np.int16, compress: bool = False) -> Path:
    """A NIfTI file whose header promises ``shape``: uncompressed as a sparse file (no disk used), compressed as
    the header alone (the check must refuse before any voxel is read)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_data_offset(352)
    block = header.binaryblock + b"\0" * 4
    if compress:
        path.write_bytes(gzip.compress(block))
    else:
        path.write_bytes(block)
        os.truncate(path, 352 + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return path


def test_volume_far_larger_than_memory_is_refused_from_its_header(tmp_path):
    from monai_unet2.data import available_memory, header_voxel_count, memory_refusal

    available = available_memory()
    assert available is not None and available > 2**28
    for path in (
        sparse_nifti(tmp_path / "huge.nii", (3000, 3000, 3000)),
        sparse_nifti(tmp_path / "huge.nii.gz", (3000, 3000, 3000), compress=True),
    ):
        assert header_voxel_count(path) == 27_000_000_000
        with pytest.raises(VolumeFileError) as caught:
            SafeLoadImaged("image", image_only=True)({"image": str(path)})
        message = str(caught.value)
        assert message.startswith(f"{path}: volume too large to process in one piece: 27,000,000,000 voxels")
        assert "603.5 GiB" in message and "refused before reading" in message
    # the limit follows the available memory: half of the allowed size passes, twice of it is refused
    allowed_voxels = available * 0.8 / 24
    for factor, refused in ((0.5, False), (2.0, True)):
        depth = int(factor * allowed_voxels / 1000 / 1000)
        path = sparse_nifti(tmp_path / f"x{factor}.nii", (1000, 1000, depth), dtype=np.uint8)
        assert (memory_refusal(path) is not None) == refused
        assert memory_refusal(path, max_memory_fraction=None) is None


PEAK_MEMORY_OF_REFUSALS = """
import json, resource, sys
from monai_unet2.transforms import SafeLoadImaged
load = SafeLoadImaged("image", image_only=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
messages = []
for path in sys.argv[1:]:
    try:
        load({"image": path})
        messages.append(None)
    except Exception as error:
        messages.append(str(error))
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"peak_growth_kib": growth, "messages": messages}))
"""


@pytest.mark.integration
def test_refusing_a_huge_volume_reads_none_of_it(tmp_path):
    """The peak memory (``ru_maxrss``) of a fresh process barely grows while it refuses two 54 GB volumes: measured
    in a subprocess, since in the shared pytest process an earlier test's peak would hide any growth."""
    paths = [
        sparse_nifti(tmp_path / "huge.nii", (3000, 3000, 3000)),
        sparse_nifti(tmp_path / "huge.nii.gz", (3000, 3000, 3000), compress=True),
    ]
    result = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_OF_REFUSALS, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for path, message in zip(paths, report["messages"]):
        assert message is not None and message.startswith(f"{path}: volume too large to process in one piece")
    assert 0 <= report["peak_growth_kib"] < 200 * 1024  # kB: nothing was read


def test_dicom_series_size_is_judged_from_its_headers():
    from monai_unet2.data import header_voxel_count

    slices = sorted(DCMQI_CT.iterdir())
    assert header_voxel_count(DCMQI_CT) == 512 * 512 * len(slices)
    with pytest.raises(VolumeFileError) as caught:
        SafeLoadImaged("image", reader=DicomSeriesReader, image_only=True, max_memory_fraction=1e-9)(
            {"image": str(DCMQI_CT)}
        )
    assert str(caught.value).startswith(
        f"{DCMQI_CT}: volume too large to process in one piece: {512 * 512 * len(slices):,} voxels"
    )


@pytest.mark.slow
@pytest.mark.integration
def test_bundle_inference_refuses_a_huge_volume_and_keeps_finished_outputs(tmp_path):
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    shutil.copy(SAMPLE / "imagesTr" / CASE, inputs / CASE)
    sparse_nifti(inputs / "zz_whole_body_scan.nii", (4000, 4000, 3000))
    argv = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(BUNDLE / "configs" / "inference.json"),
        "--bundle_root",
        str(BUNDLE),
        "--dataset_dir",
        str(inputs),
        "--output_dir",
        str(outputs),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]  # an error exit, not -9 from the OOM killer
    last = result.stderr.strip().splitlines()[-1]  # the batch's list of failed inputs ends the output
    assert last.startswith(f"  {inputs / 'zz_whole_body_scan.nii'}: volume too large to process in one piece"), last
    written = sorted(path.name for path in outputs.glob("*.nii.gz"))
    assert written == ["hippocampus_004_seg.nii.gz"]
    assert nib.load(outputs / written[0]).shape == nib.load(inputs / CASE).shape
