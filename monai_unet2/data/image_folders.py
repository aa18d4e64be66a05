"""Datalists for 2D image datasets stored as parallel folders (images, labels, masks) with different file names.

Many 2D datasets (DRIVE, STARE, CHASE_DB1, ISBI EM) do not follow the Decathlon layout: the image
``21_training.tif``, its label ``21_manual1.gif`` and its field-of-view mask ``21_training_mask.gif`` live in three
folders and share only a case id inside the name. MONAI's ``load_decathlon_datalist`` needs a ``dataset.json``
and its folder helpers pair files by identical names, so neither pairs these. :func:`paired_datalist` extracts the
case id from every file name with one regular expression, pairs the folders by that id, refuses unpaired files
with an error naming them, and splits with :func:`monai_unet2.data.datalist.split_cases` (fixed and documented).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from monai_unet2.data.datalist import DatalistError, split_cases

__all__ = ["IMAGE_SUFFIXES", "image_files", "image_folder_datalist", "paired_datalist"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".bmp")


def image_files(folder: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """The 2D image files of a folder, sorted by name; hidden files (``.*``, ``._*``) are skipped.

    Args:
        folder: the folder to list (not recursive).
        suffixes: accepted file name endings, compared case-insensitively.

    Raises:
        DatalistError: the folder does not exist.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatalistError(f"image folder {root} does not exist")
    wanted = tuple(suffix.lower() for suffix in suffixes)
    return sorted(
        p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(wanted)
    )


def _case_id(path: Path, pattern: re.Pattern | None) -> str:
    if pattern is None:
        name = path.name
        return name[: -len(path.suffix)] if path.suffix else name
    match = pattern.search(path.name)
    if match is None:
        raise DatalistError(f"{path}: file name does not match the case pattern {pattern.pattern!r}")
    return match.group(1) if match.groups() else match.group(0)


def _index_by_case(folder: str | os.PathLike, pattern: re.Pattern | None, suffixes: Sequence[str], role: str) -> dict:
    files = image_files(folder, suffixes)
    if not files:
        raise DatalistError(f"{role} folder {folder}: no image files ({', '.join(suffixes)})")
    by_case: dict[str, Path] = {}
    for path in files:
        case = _case_id(path, pattern)
        if case in by_case:
            raise DatalistError(f"{path}: {role} case id {case!r} already used by {by_case[case]}")
        by_case[case] = path
    return by_case


def paired_datalist(
    image_dir: str | os.PathLike,
    label_dir: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    case_pattern: str | None = r"^(\d+)_",
    split: str = "all",
    validation_every: int = 5,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    mask_key: str = "mask",
) -> list[dict]:
    """Pair the files of an image folder with those of a label folder and an optional mask folder by case id.

    The case id of a file is the first group of ``case_pattern`` searched in its name (the whole match when the
    pattern has no group; the name without its last suffix when ``case_pattern`` is None). Every image must have a
    partner in each given folder and vice versa.

    Args:
        image_dir: folder of input images (e.g. DRIVE ``training/images``).
        label_dir: folder of label images (e.g. ``training/1st_manual``); None for unlabelled images.
        mask_dir: folder of region masks (e.g. the DRIVE field-of-view ``training/mask``); None if there are none.
        case_pattern: regular expression extracting the case id; the default takes the leading number before an
            underscore (``21_training.tif``, ``21_manual1.gif`` and ``21_training_mask.gif`` are case ``21``).
        split: ``"training"``, ``"validation"`` or ``"all"``.
        validation_every: period of the validation cases in the list sorted by image name (cases 0, n, 2n, ...;
            see :func:`~monai_unet2.data.datalist.split_cases`); 5 holds out 4 of 20 images.
        suffixes: accepted file name endings.
        mask_key: dictionary key for the mask files.

    Returns:
        a list of ``{"image": path, "label": path, mask_key: path}`` (keys of the given folders only) with
        absolute paths, sorted by image file name and split.

    Raises:
        DatalistError: a folder is missing or empty, a name does not match ``case_pattern``, two files of a folder
            share a case id, or a file has no partner (the message names it).
    """
    pattern = re.compile(case_pattern) if case_pattern is not None else None
    images = _index_by_case(image_dir, pattern, suffixes, "image")
    partners = {key: folder for key, folder in (("label", label_dir), (mask_key, mask_dir)) if folder is not None}
    indexed = {key: _index_by_case(folder, pattern, suffixes, key) for key, folder in partners.items()}
    for key, by_case in indexed.items():
        for case, path in by_case.items():
            if case not in images:
                raise DatalistError(f"{path}: {key} file of case {case!r} has no image in {image_dir}")
        for case, path in images.items():
            if case not in by_case:
                raise DatalistError(f"{path}: image of case {case!r} has no {key} file in {partners[key]}")
    cases = []
    for case, path in images.items():
        entry = {"image": str(path.resolve())}
        entry.update({key: str(by_case[case].resolve()) for key, by_case in indexed.items()})
        cases.append(entry)
    return split_cases(cases, split, validation_every)


def image_folder_datalist(dataset_dir: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[dict]:
    """Every 2D image of a folder as ``{"image": path}``, sorted by name: the input list of 2D inference.

    A single image file is accepted too (a one-entry list), so ``--dataset_dir`` may point at one file.

    Args:
        dataset_dir: folder of images, or one image file.
        suffixes: accepted file name endings.

    Raises:
        DatalistError: the path does not exist or holds no image with one of ``suffixes``.
    """
    path = Path(dataset_dir)
    if path.is_file():
        if not path.name.lower().endswith(tuple(s.lower() for s in suffixes)):
            raise DatalistError(f"{path}: not a 2D image file ({', '.join(suffixes)})")
        return [{"image": str(path.resolve())}]
    files = image_files(path, suffixes)
    if not files:
        raise DatalistError(f"{path}: no image files to segment ({', '.join(suffixes)})")
    return [{"image": str(p.resolve())} for p in files]
