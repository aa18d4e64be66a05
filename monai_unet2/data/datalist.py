"""Datalists for the bundles: Medical Segmentation Decathlon folders and folders of volumes to infer.

MONAI's ``load_decathlon_datalist`` reads a ``dataset.json`` but needs one to exist, has no reproducible
train/validation split of its own and lets entries point anywhere. Bundles need all three: the committed sample and
user folders often hold only ``imagesTr/`` and ``labelsTr/``; validation must be a fixed, documented split; and a
datalist from someone else must not read files outside the dataset root (``../../etc``) unless the user says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from monai_unet2.data.files import dicom_files

__all__ = ["DatalistError", "inference_datalist", "msd_datalist", "resolve_inside", "split_cases"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class DatalistError(ValueError):
    """A datalist entry or dataset folder that cannot be used; the message names the file and the problem."""


def resolve_inside(root: str | os.PathLike, relative: str, allow_outside_root: bool = False) -> str:
    """Resolve ``relative`` against ``root`` and refuse paths that escape it.

    Args:
        root: the dataset root.
        relative: a path from a datalist, relative to ``root`` (absolute paths are checked the same way).
        allow_outside_root: accept paths outside ``root`` (for datalists you wrote yourself).

    Raises:
        DatalistError: when the resolved path is outside ``root`` and ``allow_outside_root`` is False.
    """
    root_path = Path(root).resolve()
    path = (root_path / relative).resolve()
    if not allow_outside_root and root_path != path and root_path not in path.parents:
        raise DatalistError(
            f"datalist entry {relative!r} resolves to {path}, outside the dataset root {root_path}; "
            "pass allow_outside_root=True if this is intended"
        )
    return str(path)


def split_cases(cases: Sequence[dict], split: str, validation_every: int = 5) -> list[dict]:
    """Deterministic split: sorted by image file name, every ``validation_every``-th case (index 0, n, 2n, ...)
    is validation, the rest training.

    Args:
        cases: datalist entries with an ``image`` key.
        split: ``"training"``, ``"validation"`` or ``"all"``.
        validation_every: the period of the validation cases; 0 puts every case in training.
    """
    if split not in ("training", "validation", "all"):
        raise ValueError(f"split must be 'training', 'validation' or 'all', got {split!r}")
    ordered = sorted(cases, key=lambda case: os.path.basename(case["image"]))
    if split == "all":
        return ordered
    in_validation = [validation_every > 0 and index % validation_every == 0 for index in range(len(ordered))]
    want_validation = split == "validation"
    return [case for case, is_val in zip(ordered, in_validation) if is_val == want_validation]


def _nifti_stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def msd_datalist(
    dataset_dir: str | os.PathLike,
    split: str = "all",
    validation_every: int = 5,
    image_dir: str = "imagesTr",
    label_dir: str = "labelsTr",
    allow_outside_root: bool = False,
) -> list[dict]:
    """Image/label pairs of a Medical Segmentation Decathlon style folder, split reproducibly.

    Uses ``dataset.json`` (its ``training`` entries) when the folder has one, otherwise pairs
    ``imagesTr/<case>.nii.gz`` with ``labelsTr/<case>.nii.gz`` by name. Files whose name starts with ``._``
    (macOS resource forks, common in MSD archives) are ignored.

    Args:
        dataset_dir: the dataset root.
        split: ``"training"``, ``"validation"`` or ``"all"`` (see :func:`split_cases`).
        validation_every: period of the validation cases in the sorted case list.
        image_dir: image sub-folder when there is no ``dataset.json``.
        label_dir: label sub-folder when there is no ``dataset.json``.
        allow_outside_root: accept ``dataset.json`` entries that point outside ``dataset_dir``.

    Returns:
        a list of ``{"image": path, "label": path}`` with absolute paths.

    Raises:
        DatalistError: no cases, a missing label, or an entry outside the root.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatalistError(f"dataset folder {root} does not exist")
    manifest = root / "dataset.json"
    cases: list[dict] = []
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text())["training"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DatalistError(f"{manifest}: not a Decathlon dataset.json with a 'training' list ({err})") from err
        for entry in entries:
            case = {key: resolve_inside(root, entry[key], allow_outside_root) for key in ("image", "label")}
            cases.append(case)
    else:
        images = sorted(
            p for p in (root / image_dir).glob("*") if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("._")
        )
        for image in images:
            label = root / label_dir / image.name
            cases.append({"image": str(image.resolve()), "label": str(label.resolve())})
    if not cases:
        raise DatalistError(f"{root}: no cases found (expected dataset.json or {image_dir}/*.nii.gz)")
    for case in cases:
        for key in ("image", "label"):
            if not os.path.isfile(case[key]):
                raise DatalistError(f"{case[key]}: {key} file listed for case {_nifti_stem(case['image'])} is missing")
    return split_cases(cases, split, validation_every)


def inference_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """The inputs of a folder to segment: every NIfTI file in it and every sub-folder holding DICOM files
    (:func:`~monai_unet2.data.files.dicom_files`; one series per folder, the reader picks the series when there are
    several).

    Args:
        dataset_dir: the folder to scan (not recursive beyond one level of series folders).

    Returns:
        a list of ``{"image": path}`` sorted by name; NIfTI entries are files, DICOM entries folders.

    Raises:
        DatalistError: the folder does not exist or holds nothing to segment.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatalistError(f"input folder {root} does not exist")
    inputs: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        is_nifti = entry.is_file() and entry.name.endswith(NIFTI_SUFFIXES)
        if is_nifti or (entry.is_dir() and next(dicom_files(entry, log_ignored=False), None) is not None):
            inputs.append(str(entry.resolve()))
    if not inputs:
        raise DatalistError(f"{root}: no NIfTI files (*.nii, *.nii.gz) or DICOM series folders to segment")
    return [{"image": path} for path in inputs]
