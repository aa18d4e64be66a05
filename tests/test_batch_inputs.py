"""A batch's inputs and outputs checked before anything runs (``monai_unet2.engines.batch_datalist``), on real files:
copies of the committed hippocampus volumes, DRIVE images and CT series, mutated in ``tmp_path``.

Colliding output names, links out of the input folder, files that are no input, an output folder that cannot be
written, and outputs a resumed run must not count as done."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_unet2.data import DatalistError, OutputWriteError, image_folder_datalist, inference_datalist, pending_inputs
from monai_unet2.data.output_checks import output_problem
from monai_unet2.data.outputs import OutputNameError, SegmentationWriter, check_output_names
from monai_unet2.engines import batch_datalist, links_out_of

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation" / "sample_data" / "imagesTr"
CASES = sorted(SAMPLE.glob("*.nii.gz"))
CT3 = ROOT / "tests" / "data" / "dicom" / "dcmqi_ct3slice" / "ct"
DRIVE_IMAGE = ROOT.parent / "shared" / "data" / "drive" / "training" / "images" / "21_training.tif"


def _folder(tmp_path: Path, *names: str) -> Path:
    """An input folder holding copies of the first committed cases under ``names``."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name, case in zip(names, CASES):
        if name.endswith(".nii"):
            (folder / name).write_bytes(gzip.decompress(case.read_bytes()))
        else:
            shutil.copy(case, folder / name)
    return folder


def _refusal(datalist, output_dir, **kwargs) -> str:
    with pytest.raises(OutputNameError) as caught:
        check_output_names(datalist, output_dir, **kwargs)
    return str(caught.value)


def test_colliding_output_names_are_refused_naming_both_inputs(tmp_path):
    folder = _folder(tmp_path, "x.nii.gz", "x.nii", "other.nii.gz")
    datalist = [{"image": str(folder / name)} for name in ("other.nii.gz", "x.nii", "x.nii.gz")]
    message = _refusal(datalist, tmp_path / "out")
    assert f"{folder / 'x.nii'} and {folder / 'x.nii.gz'} would both be written to x_seg.nii.gz" in message
    assert "other" not in message and "\n" not in message
    listed = inference_datalist(folder)  # the folder listing keeps one "x" of the two ...
    assert len(listed) == 2
    with pytest.raises(OutputNameError, match=f"{folder / 'x.nii'} and {folder / 'x.nii.gz'} would both be written"):
        batch_datalist(listed, folder, tmp_path / "out")  # ... and the batch refuses instead of dropping the other
    assert not (tmp_path / "out").exists()

    series = folder / "x"  # a DICOM series folder named like a NIfTI input
    shutil.copytree(CT3, series)
    (folder / "x.nii").unlink()
    message = _refusal([{"image": str(series)}, {"image": str(folder / "x.nii.gz")}], tmp_path / "out")
    assert f"{series} and {folder / 'x.nii.gz'} would both be written to x_seg.nii.gz" in message
    with pytest.raises(OutputNameError, match=r"would both be written to x_seg\.nii\.gz"):
        batch_datalist(inference_datalist(folder), folder, tmp_path / "out")

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    with Image.open(DRIVE_IMAGE) as image:
        image.crop((0, 0, 64, 64)).save(pngs / "a.tif")
        image.crop((64, 64, 128, 128)).save(pngs / "a.png")
    message = _refusal(image_folder_datalist(pngs), tmp_path / "out", output_format="png")
    assert f"{pngs / 'a.png'} and {pngs / 'a.tif'} would both be written to a_seg.png" in message

    message = _refusal([str(CASES[0]), str(CASES[0])], tmp_path / "out")
    assert f"{CASES[0]} is listed 2 times" in message
    message = _refusal([str(folder / "A.nii.gz"), str(folder / "a.nii.gz")], tmp_path / "out")
    assert "would both be written to" in message  # one file on case-insensitive file systems


def test_an_output_that_would_replace_an_input_is_refused(tmp_path):
    folder = _folder(tmp_path, "case.nii.gz", "case_seg.nii.gz")
    message = _refusal(inference_datalist(folder), folder)
    assert f"the output {folder / 'case_seg.nii.gz'} of {folder / 'case.nii.gz'} would replace an input" in message
    check_output_names(inference_datalist(folder), tmp_path / "elsewhere")  # distinct names: accepted


def test_the_input_folder_as_output_folder_is_refused(tmp_path):
    """Outputs written among the inputs would be segmented as inputs by the next run."""
    folder = _folder(tmp_path, "case.nii.gz")
    with pytest.raises(OutputWriteError, match=f"the output folder {folder} is the input folder"):
        batch_datalist(inference_datalist(folder), folder, folder)
    with pytest.raises(OutputWriteError, match="is the input folder"):
        batch_datalist(inference_datalist(folder), folder, folder / ".." / folder.name)
    assert sorted(p.name for p in folder.iterdir()) == ["case.nii.gz"]


def test_the_writer_never_replaces_an_output_it_wrote_for_another_input(tmp_path):
    """The guard for callers that skip the batch check: a second input of the same name is refused, naming both,
    and the first output stays as written."""
    first, second = tmp_path / "a" / "x.nii.gz", tmp_path / "b" / "x.nii.gz"
    for path, case in ((first, CASES[0]), (second, CASES[1])):
        path.parent.mkdir()
        shutil.copy(case, path)
    writer = SegmentationWriter(tmp_path / "out")
    label = (np.asarray(nib.load(first).dataobj) > 60).astype(np.uint8)
    meta = {"filename_or_obj": str(first), "affine": nib.load(first).affine}
    (written,) = writer.write(label[None], meta)
    before = Path(written).read_bytes()
    other = np.zeros(nib.load(second).shape, np.uint8)
    with pytest.raises(OutputNameError, match=f"{second} and {first} would both be written to {written}"):
        writer.write(other[None], {"filename_or_obj": str(second), "affine": nib.load(second).affine})
    assert Path(written).read_bytes() == before
    writer.write(label[None], meta)  # the same input again (a re-run in the same process) is allowed


def test_links_out_of_the_input_folder_are_refused_naming_link_and_target(tmp_path):
    folder = _folder(tmp_path, "real.nii.gz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(CASES[1], elsewhere / "theirs.nii.gz")
    (folder / "borrowed.nii.gz").symlink_to(elsewhere / "theirs.nii.gz")
    (folder / "evil.nii.gz").symlink_to("/etc/hostname")
    with pytest.raises(DatalistError) as caught:
        batch_datalist(inference_datalist(folder), folder, tmp_path / "out")
    message = str(caught.value)
    assert f"{folder / 'borrowed.nii.gz'} -> {elsewhere / 'theirs.nii.gz'}" in message
    assert f"{folder / 'evil.nii.gz'} -> /etc/hostname" in message
    assert not (tmp_path / "out").exists()  # refused before the output folder was made

    (folder / "evil.nii.gz").unlink()
    allowed = batch_datalist(inference_datalist(folder), folder, tmp_path / "out", allow_outside_root=True)
    assert [Path(entry["image"]).name for entry in allowed] == ["theirs.nii.gz", "real.nii.gz"]
    assert links_out_of(folder) == {str(folder / "borrowed.nii.gz"): str(elsewhere / "theirs.nii.gz")}


def test_a_series_folder_with_a_slice_linked_from_elsewhere_is_refused(tmp_path):
    folder = tmp_path / "inputs"
    series = folder / "series"
    series.mkdir(parents=True)
    slices = sorted(CT3.iterdir())
    for path in slices[:2]:
        shutil.copy(path, series / path.name)
    (series / slices[2].name).symlink_to(slices[2])  # the third slice stays in the repository
    with pytest.raises(DatalistError, match=f"{series / slices[2].name} -> {slices[2]}"):
        batch_datalist(inference_datalist(folder), folder, tmp_path / "out")


def test_links_inside_the_folder_are_followed(tmp_path):
    folder = _folder(tmp_path, "a.nii.gz")
    (folder / "store").mkdir()
    shutil.copy(CASES[1], folder / "store" / "b_data.nii.gz")
    (folder / "b.nii.gz").symlink_to(folder / "store" / "b_data.nii.gz")
    entries = batch_datalist(inference_datalist(folder), folder, tmp_path / "out")
    assert [Path(entry["image"]).name for entry in entries] == ["a.nii.gz", "b_data.nii.gz"]


def test_every_entry_that_is_no_input_is_named_with_what_it_holds(tmp_path, caplog):
    folder = _folder(tmp_path, "case.nii.gz")
    (folder / "notes.txt").write_text("scanned on the old scanner\n")
    (folder / "empty_folder").mkdir()
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "loop.nii.gz").symlink_to(folder / "loop.nii.gz")
    with Image.open(DRIVE_IMAGE) as image:
        image.save(folder / "fundus.png")
    with caplog.at_level(logging.INFO, logger="monai_unet2"):  # listed by hand: the folder listing fails on the loop
        entries = batch_datalist([{"image": str(folder / "case.nii.gz")}], folder, tmp_path / "out")
    assert len(entries) == 1
    skipped = {record.getMessage() for record in caplog.records if "skipped" in record.getMessage()}
    assert (
        f"{folder / 'notes.txt'}: skipped, not an input of this batch (a text file (starting 'scanned on the old scanner'))"
        in skipped
    )
    assert f"{folder / 'fundus.png'}: skipped, not an input of this batch (a PNG image)" in skipped
    assert f"{folder / 'empty_folder'}: skipped, a folder without DICOM files" in skipped
    assert f"{folder / '.DS_Store'}: skipped, a hidden file or folder" in skipped
    assert f"{folder / 'loop.nii.gz'}: skipped, a symbolic link loop" in skipped
    assert len(skipped) == 5


def test_an_output_folder_that_cannot_be_written_is_refused_before_anything_runs(tmp_path):
    folder = _folder(tmp_path, "case.nii.gz")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputWriteError, match=f"{blocker / 'out'}"):
        batch_datalist(inference_datalist(folder), folder, blocker / "out")
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputWriteError, match=f"cannot write into the output folder {locked}"):
            batch_datalist(inference_datalist(folder), folder, locked)


def _output(folder: Path, case: Path, name: str) -> Path:
    """A real output of ``case`` (a label map of its shape and affine) written by the package's writer, saved in
    ``folder`` as ``name``."""
    image = nib.load(case)
    label = (np.asarray(image.dataobj) > np.percentile(np.asarray(image.dataobj), 90)).astype(np.uint8)
    scratch = folder.parent / f"scratch_{name}"
    (path,) = SegmentationWriter(scratch).write(label[None], {"filename_or_obj": str(case), "affine": image.affine})
    return Path(shutil.move(path, folder / name))


def test_resume_counts_only_finished_outputs_as_done(tmp_path, caplog):
    """A 0-byte output, a truncated one, an output of another input under this name and a folder in its place are
    redone; a finished output is kept, byte for byte."""
    out = tmp_path / "out"
    out.mkdir()
    names = [case.name.replace(".nii.gz", "_seg.nii.gz") for case in CASES[:5]]
    finished = _output(out, CASES[0], names[0])
    (out / names[1]).write_bytes(b"")
    whole = _output(out, CASES[2], names[2]).read_bytes()
    (out / names[2]).write_bytes(whole[: len(whole) // 2])
    _output(out, CASES[0], names[3])  # the output of case 0 under case 3's name: another shape
    (out / names[4]).mkdir()
    kept = finished.read_bytes()
    datalist = [{"image": str(case)} for case in CASES[:6]]
    with caplog.at_level(logging.WARNING, logger="monai_unet2"):
        pending = pending_inputs(datalist, out)
    assert pending == datalist[1:]
    messages = [record.getMessage() for record in caplog.records]
    assert (
        f"resume: {out / names[1]} is not a finished output: an empty file (0 bytes); segmenting {CASES[1]} again"
        in messages
    )
    assert any(f"{out / names[2]} is not a finished output: it cannot be read (" in m for m in messages)
    shape_3, shape_0 = nib.load(CASES[3]).shape, nib.load(CASES[0]).shape
    assert any(f"its shape {shape_0} is not the input's spatial shape {shape_3}" in m for m in messages)
    assert any(f"{out / names[4]} is not a finished output: it is not a regular file" in m for m in messages)
    assert finished.read_bytes() == kept
    with pytest.raises(
        OutputWriteError, match=f"taken by a folder or a broken link, nothing was run: {out / names[4]}"
    ):
        batch_datalist(datalist, SAMPLE, out, resume=True)  # the batch refuses it before starting
    (out / names[4]).rmdir()
    assert batch_datalist(datalist, SAMPLE, out, resume=True) == datalist[1:]


def test_resume_checks_png_outputs_against_the_input_size(tmp_path):
    with Image.open(DRIVE_IMAGE) as image:
        width, height = image.size
    out = tmp_path / "21_training_seg.png"
    assert output_problem(out, DRIVE_IMAGE) == "it does not exist"
    Image.new("L", (width, height)).save(out)
    assert output_problem(out, DRIVE_IMAGE) is None
    Image.new("L", (width, height - 1)).save(out)
    assert output_problem(out, DRIVE_IMAGE) == f"its size {width} x {height - 1} is not the input's {width} x {height}"
    Image.new("L", (width, height)).save(out)
    out.write_bytes(out.read_bytes()[:-30])
    assert output_problem(out, DRIVE_IMAGE).startswith("it cannot be read (")
