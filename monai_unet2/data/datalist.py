"""Datalists for the bundles: training folds of a dataset, the fixed "every n-th case" split, folders to segment.

MONAI's ``load_decathlon_datalist`` reads a ``dataset.json`` but needs one to exist, has no reproducible
train/validation split of its own and lets entries point anywhere. Bundles need more: user folders come in the
nnU-Net or Decathlon layout (:func:`~monai_unet2.data.datasets.read_dataset`), often without a ``dataset.json``;
validation is a recorded case-level fold (``configs/splits.json``, :mod:`monai_unet2.data.splits`); and a datalist
from someone else must not read files outside the dataset root (``../../etc``) unless the user says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_unet2.data.dataset_json import DatalistError
from monai_unet2.data.datasets import IMAGE_ENDINGS, case_files, image_entries, image_stem, read_dataset, resolve_inside
from monai_unet2.data.splits import fold_cases, make_splits, read_splits

__all__ = [
    "DatalistError",
    "fold_datalist",
    "inference_datalist",
    "msd_datalist",
    "pending_cases",
    "resolve_inside",
    "split_cases",
]

logger = logging.getLogger(__name__)


def _first_path(image: str | Sequence[str]) -> str:
    return image if isinstance(image, str) else image[0]


def split_cases(cases: Sequence[dict], split: str, validation_every: int = 5) -> list[dict]:
    """Deterministic split: sorted by image file name, every ``validation_every``-th case (index 0, n, 2n, ...)
    is validation, the rest training.

    Args:
        cases: datalist entries with an ``image`` key (a path, or a list of per-channel paths).
        split: ``"training"``, ``"validation"`` or ``"all"``.
        validation_every: the period of the validation cases; 0 puts every case in training.
    """
    if split not in ("training", "validation", "all"):
        raise ValueError(f"split must be 'training', 'validation' or 'all', got {split!r}")
    ordered = sorted(cases, key=lambda case: os.path.basename(_first_path(case["image"])))
    if split == "all":
        return ordered
    in_validation = [validation_every > 0 and index % validation_every == 0 for index in range(len(ordered))]
    want_validation = split == "validation"
    return [case for case, is_val in zip(ordered, in_validation) if is_val == want_validation]


def msd_datalist(
    dataset_dir: str | os.PathLike,
    split: str = "all",
    validation_every: int = 5,
    image_dir: str = "imagesTr",
    label_dir: str = "labelsTr",
    allow_outside_root: bool = False,
) -> list[dict]:
    """Image/label pairs of a dataset folder (nnU-Net, Decathlon or plain ``imagesTr``/``labelsTr``), split
    reproducibly by :func:`split_cases`.

    Args:
        dataset_dir: the dataset root.
        split: ``"training"``, ``"validation"`` or ``"all"`` (see :func:`split_cases`).
        validation_every: period of the validation cases in the sorted case list.
        image_dir: image sub-folder when there is no ``dataset.json`` listing the cases.
        label_dir: label sub-folder when there is no ``dataset.json`` listing the cases.
        allow_outside_root: accept entries and files that resolve outside ``dataset_dir``.

    Returns:
        ``{"case": name, "image": path or [paths], "label": path}`` entries with absolute paths.

    Raises:
        DatalistError: no cases, a missing image, channel or label file, or an entry outside the root.
    """
    dataset = read_dataset(dataset_dir, allow_outside_root, image_dir, label_dir)
    return split_cases(dataset.training, split, validation_every)


def fold_datalist(
    dataset_dir: str | os.PathLike,
    split: str = "training",
    fold: int | str = 0,
    splits_file: str | os.PathLike | None = None,
    num_folds: int | None = None,
    allow_outside_root: bool = False,
) -> list[dict]:
    """The cases of one cross-validation fold of a dataset folder (or its labelled test cases), as a MONAI datalist.

    The folds are those of ``splits_file`` (``configs/splits.json``, written by ``python -m monai_unet2 plan``) when
    it lists exactly the dataset's cases. For another set of cases (the committed sample of a bundle, a folder with
    cases added since planning) the folds are made for these cases by the same rule (interleaved over the sorted
    names, :func:`~monai_unet2.data.splits.make_splits`), with a warning.

    Args:
        dataset_dir: the dataset root, in any layout :func:`~monai_unet2.data.datasets.read_dataset` reads.
        split: ``"training"`` or ``"validation"`` (of ``fold``), ``"all"`` (every training case) or ``"test"`` (the
            test cases that have a label: ``imagesTs`` with ``labelsTs``).
        fold: the fold index, or ``"all"`` (train on every case; see :func:`~monai_unet2.data.splits.fold_cases`).
        splits_file: the recorded folds, or ``None`` to make them.
        num_folds: folds to make when ``splits_file`` does not apply; default: as many as it records, else 5.
        allow_outside_root: accept entries and files that resolve outside ``dataset_dir``.

    Raises:
        DatalistError: the dataset cannot be read (see ``read_dataset``), or has no labelled test case;
            ValueError: a fold that does not exist.
    """
    dataset = read_dataset(dataset_dir, allow_outside_root)
    if split == "test":
        labelled = [case for case in dataset.test if "label" in case]
        if not labelled:
            raise DatalistError(f"{dataset.root}: no test case with a label (imagesTs/<case> with labelsTs/<case>)")
        return labelled
    if split == "all":
        return list(dataset.training)
    by_name = {case["case"]: case for case in dataset.training}
    splits = None
    if splits_file is not None and os.path.isfile(splits_file):
        recorded = read_splits(splits_file)
        num_folds = num_folds or len(recorded)
        listed = {name for item in recorded for name in item["train"] + item["val"]}
        if listed == set(by_name):
            splits = recorded
        else:
            logger.warning(
                "%s lists %d cases and %s has %d (%d in common): folds made for this dataset (interleaved, %d folds)",
                splits_file,
                len(listed),
                dataset_dir,
                len(by_name),
                len(listed & set(by_name)),
                num_folds,
            )
    if splits is None:
        splits = make_splits(list(by_name), num_folds or 5)
    if len(by_name) == 1 and split == "validation":
        logger.warning("%s holds a single case: it is validated on the case it trains on", dataset_dir)
    elif str(fold) == "all" and split == "validation":
        logger.warning("fold 'all' trains on every case: its validation (fold 0's cases) is not held out")
    return [by_name[name] for name in fold_cases(splits, fold, split)]


def _group_nnunet_channels(folder: Path, channels: int) -> dict[str, str | list[str]] | None:
    """Per-channel files of a plain folder grouped by case, when the folder uses nnU-Net's naming; else ``None``."""
    stems = list(image_entries(folder))
    if not stems or not all(stem[-5:-4] == "_" and stem[-4:].isdigit() for stem in stems):
        return None
    try:
        return case_files(folder, IMAGE_ENDINGS, channels, per_channel=True)
    except DatalistError:
        if channels > 1:
            raise
        return None  # single-channel files whose case names end in 4 digits (case_0001, case_0002, ...)


def inference_datalist(dataset_dir: str | os.PathLike, channels: int = 1) -> list[dict]:
    """The inputs of a folder to segment, one entry per case.

    ``dataset_dir`` may be

    - a dataset root (it has ``dataset.json``, ``imagesTs/`` or ``imagesTr/``): its test images (``imagesTs`` or
      the ``dataset.json`` ``test`` list), or its training images (labels or not) when it has no test images;
    - one image file: that case alone;
    - a folder of images: every NIfTI file and every sub-folder holding DICOM files
      (:func:`~monai_unet2.data.files.dicom_files`; one series per folder), each one case; files named in nnU-Net's
      per-channel way (``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ...) are grouped into one case with one
      file per channel, which they must be for a bundle with several input channels.

    Args:
        dataset_dir: the folder to scan (not recursive beyond one level of series folders).
        channels: the input channels of the bundle (``len(@input_channels)``).

    Returns:
        ``{"image": path or [paths], "case": name}`` entries sorted by case; NIfTI entries are files, DICOM entries
        folders.

    Raises:
        DatalistError: the folder does not exist or holds nothing to segment; a case misses a channel file.
    """
    root = Path(dataset_dir)
    if root.is_file():
        return [_single_image(root, channels)]
    if not root.is_dir():
        raise DatalistError(f"input folder {root} does not exist")
    if (root / "dataset.json").is_file() or (root / "imagesTs").is_dir() or (root / "imagesTr").is_dir():
        dataset = read_dataset(root, require_labels=False)
        cases = dataset.test or dataset.training
        return [{"image": case["image"], "case": case["case"]} for case in cases]
    grouped = _group_nnunet_channels(root, channels)
    if grouped is not None:
        entries = [{"image": image, "case": case} for case, image in grouped.items()]
    else:
        entries = [{"image": str(path.resolve()), "case": stem} for stem, path in image_entries(root).items()]
        if channels > 1 and entries:
            raise DatalistError(
                f"{root}: the bundle reads {channels} channels, but the images are not named <case>_0000.nii.gz, "
                "<case>_0001.nii.gz, ... (one file per channel); a 4D file per case belongs in a dataset folder with "
                "a dataset.json"
            )
    if not entries:
        raise DatalistError(f"{root}: no NIfTI files (*.nii, *.nii.gz) or DICOM series folders to segment")
    return entries


def pending_cases(
    datalist: Iterable[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    output_postfix: str = "seg",
    output_format: str = "nifti",
) -> list[dict]:
    """The entries of :func:`inference_datalist` whose outputs are not all written yet (for ``--resume True``).

    Like :func:`~monai_unet2.data.pending_inputs`, for entries whose image is a list of channel files too: their
    outputs are named after the case (see :class:`~monai_unet2.transforms.CaseNamed`).

    Args:
        datalist: entries with ``image`` and ``case``.
        output_dir, output_postfix, output_format: as given to ``SaveSegmentationd``.
    """
    from monai_unet2.data.outputs import pending_inputs

    named = []
    for entry in datalist:
        image = entry["image"]
        first = _first_path(image)
        path = first if os.path.isdir(first) else os.path.join(os.path.dirname(first), f"{entry['case']}.nii.gz")
        named.append({"image": path, "entry": entry})
    return [item["entry"] for item in pending_inputs(named, output_dir, output_postfix, output_format)]


def _single_image(path: Path, channels: int) -> dict:
    """The entry of one image file given instead of a folder (a bundle of one input channel only)."""
    if channels > 1:
        raise DatalistError(
            f"{path}: the bundle reads {channels} channels, one file per channel: give the folder that holds "
            "<case>_0000.nii.gz, <case>_0001.nii.gz, ..."
        )
    return {"image": str(path.resolve()), "case": image_stem(path.name, IMAGE_ENDINGS) or path.name}
