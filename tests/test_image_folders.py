"""paired_datalist / image_folder_datalist on a constructed folder and on DRIVE (skipped when absent)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_unet2.data import DatalistError, image_folder_datalist, paired_datalist

DRIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "drive" / "training"


def _write(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 5), value, dtype=np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path):
    for case in (3, 1, 12, 2, 7):
        _write(tmp_path / "images" / f"{case:02d}_scan.png")
        _write(tmp_path / "labels" / f"{case:02d}_manual.gif", 255)
        _write(tmp_path / "masks" / f"{case:02d}_scan_fov.png", 255)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    _write(tmp_path / "images" / "._01_scan.png")
    return tmp_path


def test_pairs_by_case_id_sorted_with_absolute_paths(folders):
    cases = paired_datalist(folders / "images", folders / "labels", folders / "masks")
    assert [Path(c["image"]).name for c in cases] == [f"{n:02d}_scan.png" for n in (1, 2, 3, 7, 12)]
    for case in cases:
        assert set(case) == {"image", "label", "mask"}
        case_id = Path(case["image"]).name.split("_")[0]
        assert Path(case["label"]).name == f"{case_id}_manual.gif"
        assert Path(case["mask"]).name == f"{case_id}_scan_fov.png"
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in case.values())


def test_split_is_deterministic_and_disjoint(folders):
    validation = paired_datalist(folders / "images", folders / "labels", split="validation", validation_every=2)
    training = paired_datalist(folders / "images", folders / "labels", split="training", validation_every=2)
    assert [Path(c["image"]).name[:2] for c in validation] == ["01", "03", "12"]
    assert [Path(c["image"]).name[:2] for c in training] == ["02", "07"]
    assert "mask" not in validation[0]


def test_missing_partner_is_named(folders):
    (folders / "labels" / "07_manual.gif").unlink()
    with pytest.raises(DatalistError, match=r"07_scan\.png.*no label"):
        paired_datalist(folders / "images", folders / "labels")
    _write(folders / "masks" / "99_scan_fov.png")
    with pytest.raises(DatalistError, match=r"99_scan_fov\.png.*has no image"):
        paired_datalist(folders / "images", mask_dir=folders / "masks")


def test_bad_names_duplicates_and_missing_folders(folders, tmp_path):
    _write(folders / "images" / "scan_without_id.png")
    with pytest.raises(DatalistError, match=r"scan_without_id\.png: file name does not match"):
        paired_datalist(folders / "images", folders / "labels")
    (folders / "images" / "scan_without_id.png").unlink()
    _write(folders / "labels" / "07_manual_v2.png")
    with pytest.raises(DatalistError, match="case id '07' already used"):
        paired_datalist(folders / "images", folders / "labels")
    with pytest.raises(DatalistError, match="does not exist"):
        paired_datalist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatalistError, match="no image files"):
        paired_datalist(tmp_path / "empty")


def test_image_folder_datalist_lists_images_or_takes_one_file(folders):
    listed = image_folder_datalist(folders / "images")
    assert [Path(c["image"]).name for c in listed] == [f"{n:02d}_scan.png" for n in (1, 2, 3, 7, 12)]
    single = image_folder_datalist(folders / "images" / "07_scan.png")
    assert single == [{"image": str((folders / "images" / "07_scan.png").resolve())}]
    with pytest.raises(DatalistError, match=r"notes\.txt: not a 2D image"):
        image_folder_datalist(folders / "images" / "notes.txt")


@pytest.mark.skipif(not DRIVE.is_dir(), reason="DRIVE not present at ../shared/data/drive")
def test_drive_training_folder_pairs_twenty_cases_and_holds_out_four():
    args = (DRIVE / "images", DRIVE / "1st_manual", DRIVE / "mask")
    cases = paired_datalist(*args)
    assert len(cases) == 20
    for case in cases:
        case_id = Path(case["image"]).name.split("_")[0]
        assert Path(case["label"]).name == f"{case_id}_manual1.gif"
        assert Path(case["mask"]).name == f"{case_id}_training_mask.gif"
    validation = paired_datalist(*args, split="validation", validation_every=5)
    training = paired_datalist(*args, split="training", validation_every=5)
    assert [Path(c["image"]).name for c in validation] == [f"{n}_training.tif" for n in (21, 26, 31, 36)]
    assert len(training) == 16 and not {c["image"] for c in training} & {c["image"] for c in validation}
