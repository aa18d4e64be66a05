"""Segmentation datasets as researchers bring them, read into one description: cases with their image channels and
label, channel names, label names, test images.

Layouts (see docs/data.md, "Datasets"):

- nnU-Net v2 raw: ``imagesTr/<case>_0000<ending>``, ``_0001``, ... (one file per channel), ``labelsTr/<case><ending>``,
  ``imagesTs/`` in the same per-channel naming, ``dataset.json`` with ``channel_names``, ``labels``, ``file_ending``.
- Medical Segmentation Decathlon: ``dataset.json`` with ``modality``, ``labels``, ``training`` (4D NIfTI images,
  channels last, or lists of files, one per channel) and ``test``.
- No ``dataset.json``: ``imagesTr/`` and ``labelsTr/`` paired by name (with or without the ``_0000`` channel suffix).

An image is a file (NIfTI, or the ``file_ending`` of ``dataset.json``), a DICOM series folder, or a list of them
(one per channel); MONAI's ``LoadImaged`` reads a list as channels, and the bundles' volume checks refuse a case
whose channel count differs. Every path must stay inside the dataset folder after resolving symbolic links, unless
``allow_outside_root``. nnU-Net checks the same layout with ``verify_dataset_integrity`` before planning; MONAI has
no reader for the per-channel naming.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_unet2.data.dataset_json import DatalistError, DatasetManifest, read_manifest
from monai_unet2.data.files import dicom_files

__all__ = [
    "IMAGE_ENDINGS",
    "DatasetDescription",
    "case_files",
    "image_entries",
    "image_stem",
    "read_dataset",
    "resolve_inside",
]

logger = logging.getLogger(__name__)

#: file endings read as volumes when ``dataset.json`` does not name one
IMAGE_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class DatasetDescription:
    """A dataset read by :func:`read_dataset`.

    Attributes:
        root: the dataset folder (resolved).
        layout: ``"nnunet"``, ``"msd"`` or ``"folders"``.
        manifest: the ``dataset.json`` file, or ``None``.
        channel_names: channel index -> name from ``dataset.json`` (empty when it does not name them).
        labels: label value -> name from ``dataset.json`` (empty when it does not name them).
        training: ``{"case", "image", "label"}`` entries with absolute paths, sorted by case name; ``image`` is one
            path, or a list with one path per channel.
        test: ``{"case", "image"[, "label"]}`` entries of the test images (``imagesTs``), possibly empty.
        name: the dataset's name (``dataset.json`` ``name``, else the folder name).
    """

    root: Path
    layout: str
    manifest: Path | None
    channel_names: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    training: list[dict[str, Any]] = field(default_factory=list)
    test: list[dict[str, Any]] = field(default_factory=list)
    name: str = ""


def resolve_inside(root: str | os.PathLike, relative: str | os.PathLike, allow_outside_root: bool = False) -> str:
    """Resolve ``relative`` against ``root``, following symbolic links, and refuse paths that end up outside it.

    Args:
        root: the dataset root.
        relative: a path from a datalist or a file found in the dataset, relative to ``root`` (absolute paths are
            checked the same way).
        allow_outside_root: accept paths outside ``root`` (for datalists you wrote yourself).

    Raises:
        DatalistError: when the resolved path is outside ``root`` and ``allow_outside_root`` is False.
    """
    root_path = Path(root).resolve()
    path = (root_path / relative).resolve()
    if not allow_outside_root and root_path != path and root_path not in path.parents:
        raise DatalistError(
            f"datalist entry {os.fspath(relative)!r} resolves to {path}, outside the dataset root {root_path}; "
            "pass allow_outside_root=True if this is intended"
        )
    return str(path)


def image_stem(name: str, endings: tuple[str, ...]) -> str | None:
    """``name`` without the first of ``endings`` it ends with, or ``None`` when it ends with none."""
    for ending in endings:
        if name.endswith(ending):
            return name[: -len(ending)]
    return None


def image_entries(folder: Path, endings: tuple[str, ...] = IMAGE_ENDINGS) -> dict[str, Path]:
    """Name stem -> path of the images in ``folder``: files with one of ``endings`` and DICOM series sub-folders.

    Hidden files and macOS ``._`` forks are left out.

    Args:
        folder: the folder to list; a missing folder has no images.
        endings: the file endings of image files.
    """
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if next(dicom_files(entry, log_ignored=False), None) is not None:
                found[entry.name] = entry
            continue
        stem = image_stem(entry.name, endings)
        if stem is not None:
            found[stem] = entry
    return found


def _group_channels(images: dict[str, Path], folder: Path, channels: int | None, ending: str) -> dict[str, list[Path]]:
    """Group ``<case>_0000``, ``<case>_0001``, ... by case; refuse a case with a missing or extra channel."""
    grouped: dict[str, dict[int, Path]] = {}
    for stem, path in images.items():
        match = _CHANNEL_SUFFIX.match(stem)
        if match is None:
            raise DatalistError(
                f"{path}: not named <case>_<4-digit channel>{ending} like the other images of {folder} "
                "(nnU-Net naming: case_0000, case_0001, ... one file per channel)"
            )
        grouped.setdefault(match["case"], {})[int(match["channel"])] = path
    counts = {len(files) for files in grouped.values()}
    expected = channels if channels is not None else max(counts, default=0)
    cases: dict[str, list[Path]] = {}
    for case, files in sorted(grouped.items()):
        missing = [index for index in range(expected) if index not in files]
        if missing:
            name = folder / f"{case}_{missing[0]:04d}{ending}"
            raise DatalistError(
                f"{name}: channel file missing: case {case} has channels {sorted(files)}, expected 0..{expected - 1} "
                f"({expected} channel(s){' as dataset.json channel_names says' if channels is not None else ''})"
            )
        extra = sorted(index for index in files if index >= expected)
        if extra:
            raise DatalistError(
                f"{files[extra[0]]}: case {case} has channel {extra[0]:04d} but the dataset has {expected} channel(s)"
                f"{' (dataset.json channel_names)' if channels is not None else ''}"
            )
        cases[case] = [files[index] for index in range(expected)]
    return cases


def _looks_per_channel(stems: list[str]) -> bool:
    """Whether every stem is ``<case>_<4 digits>`` with channels ``0000..n-1`` and the same ``n`` for every case."""
    groups: dict[str, set[int]] = {}
    for stem in stems:
        match = _CHANNEL_SUFFIX.match(stem)
        if match is None:
            return False
        groups.setdefault(match["case"], set()).add(int(match["channel"]))
    sizes = {len(channels) for channels in groups.values()}
    return len(sizes) == 1 and all(channels == set(range(len(channels))) for channels in groups.values())


def case_files(
    folder: Path,
    endings: tuple[str, ...] = IMAGE_ENDINGS,
    channels: int | None = None,
    per_channel: bool | None = None,
) -> dict[str, str | list[str]]:
    """Case -> image (one path, or one path per channel) of an image folder in either naming.

    With nnU-Net naming (``<case>_0000<ending>``, ``<case>_0001<ending>``, ...), the files are grouped by case and
    must number ``0000`` to ``channels - 1`` for every case; otherwise each file or DICOM folder is one case.

    Args:
        folder: e.g. ``imagesTr`` or ``imagesTs``.
        endings: image file endings.
        channels: the channels each case must have (``dataset.json``), or ``None`` to take them from the files.
        per_channel: whether the folder uses the per-channel naming; ``None`` decides from the names (every case has
            the same channels ``0000..n-1``).

    Raises:
        DatalistError: a case with a missing or extra channel file.
    """
    images = image_entries(folder, endings)
    if per_channel is None:
        per_channel = _looks_per_channel(list(images))
    if not per_channel or not images:
        if channels is not None and channels > 1 and images:
            raise DatalistError(
                f"{folder}: the dataset has {channels} channels, but its images are not named <case>_0000{endings[0]}, "
                f"<case>_0001{endings[0]}, ... (one file per channel)"
            )
        return {stem: str(path) for stem, path in images.items()}
    grouped = _group_channels(images, folder, channels, endings[0])
    return {case: [str(p) for p in files] if len(files) > 1 else str(files[0]) for case, files in grouped.items()}


def _label_for(case: str, folder: Path, endings: tuple[str, ...]) -> Path | None:
    for ending in endings:
        candidate = folder / f"{case}{ending}"
        if candidate.is_file():
            return candidate
    return None


def _discover(
    root: Path,
    image_dir: str,
    label_dir: str,
    endings: tuple[str, ...],
    channels: int | None,
    per_channel: bool | None,
    labels_required: bool,
) -> list[dict[str, Any]]:
    if per_channel is None:
        stems = list(image_entries(root / image_dir, endings))
        same_named = bool(stems) and all(_label_for(stem, root / label_dir, endings) is not None for stem in stems)
        per_channel = False if same_named else None
    cases = []
    for case, image in case_files(root / image_dir, endings, channels, per_channel).items():
        entry: dict[str, Any] = {"case": case, "image": image}
        label = _label_for(case, root / label_dir, endings)
        if label is not None:
            entry["label"] = str(label)
        elif labels_required:
            raise DatalistError(f"{root / label_dir / (case + endings[0])}: label file of case {case} is missing")
        cases.append(entry)
    return cases


def _case_name(image: str | list[str]) -> str:
    """The case name of a listed image: its file stem, or for per-channel files what their stems share."""
    paths = image if isinstance(image, list) else [image]
    stems = []
    for path in paths:
        name = os.path.basename(os.path.normpath(path))
        stems.append(image_stem(name, (*IMAGE_ENDINGS, ".nrrd", ".mha", ".mhd", ".dcm")) or name)
    if len(stems) == 1:
        return stems[0]
    match = _CHANNEL_SUFFIX.match(stems[0])
    if match:
        return match["case"]
    return os.path.commonprefix(stems).rstrip("_-.") or stems[0]  # noqa: RUF071 (file stems, not paths)


def _resolve_entries(root: Path, entries: list[dict[str, Any]], allow_outside_root: bool) -> list[dict[str, Any]]:
    resolved = []
    for entry in entries:
        image = entry["image"]
        case = dict(entry)
        case["image"] = (
            [resolve_inside(root, item, allow_outside_root) for item in image]
            if isinstance(image, list)
            else resolve_inside(root, image, allow_outside_root)
        )
        if "label" in entry:
            case["label"] = resolve_inside(root, entry["label"], allow_outside_root)
        case.setdefault("case", _case_name(entry["image"]))
        resolved.append(case)
    return resolved


def _check_files(cases: list[dict[str, Any]], manifest: DatasetManifest, split: str) -> None:
    where = f" ({split} case in {manifest.path})" if manifest.path is not None else f" ({split} case)"
    names: dict[str, str] = {}
    for case in cases:
        images = case["image"] if isinstance(case["image"], list) else [case["image"]]
        for channel, path in enumerate(images):
            if not os.path.exists(path):
                what = f"channel {channel} image" if len(images) > 1 else "image"
                raise DatalistError(f"{path}: {what} file listed for case {case['case']} is missing{where}")
        if "label" in case and not os.path.isfile(case["label"]):
            raise DatalistError(f"{case['label']}: label file listed for case {case['case']} is missing{where}")
        if case["case"] in names:
            raise DatalistError(f"two {split} cases are named {case['case']}: {names[case['case']]} and {images[0]}")
        names[case["case"]] = images[0]


def read_dataset(
    dataset_dir: str | os.PathLike,
    allow_outside_root: bool = False,
    image_dir: str = "imagesTr",
    label_dir: str = "labelsTr",
    require_labels: bool = True,
) -> DatasetDescription:
    """Read a dataset folder in any of the supported layouts: its training cases, test images and names.

    Args:
        dataset_dir: the dataset root.
        allow_outside_root: accept ``dataset.json`` entries and files that resolve outside ``dataset_dir``.
        image_dir: training image folder when ``dataset.json`` does not list the cases.
        label_dir: training label folder when ``dataset.json`` does not list the cases.
        require_labels: refuse a training case without its label file; ``False`` (to segment the images) keeps
            the cases and drops the missing labels.

    Returns:
        the description, training cases sorted by case name.

    Raises:
        DatalistError: no training cases, a missing image, channel or label file, a malformed ``dataset.json``
            entry, a path outside the root, or images whose channel files do not match ``channel_names``.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatalistError(f"dataset folder {root} does not exist")
    root = root.resolve()
    manifest = read_manifest(root)
    channels = len(manifest.channel_names) or None
    endings = (manifest.file_ending,) if manifest.file_ending else IMAGE_ENDINGS
    nnunet = manifest.layout == "nnunet"
    if manifest.training is not None:
        training = manifest.training
    else:
        training = _discover(root, image_dir, label_dir, endings, channels, True if nnunet else None, require_labels)
    if manifest.test is not None:
        test = manifest.test
    else:
        per_channel = True if nnunet else any(isinstance(case["image"], list) for case in training) or None
        test = _discover(root, "imagesTs", "labelsTs", endings, channels, per_channel, False)
    training = sorted(_resolve_entries(root, training, allow_outside_root), key=lambda case: case["case"])
    if not require_labels:
        training = [{k: v for k, v in c.items() if k != "label" or os.path.isfile(v)} for c in training]
    test = sorted(_resolve_entries(root, test, allow_outside_root), key=lambda case: case["case"])
    if not training:
        raise DatalistError(
            f"{root}: no training cases found (expected {image_dir}/<case>{endings[0]} with {label_dir}/<case>"
            f"{endings[0]}, or a dataset.json listing them)"
        )
    _check_files(training, manifest, "training")
    _check_files(test, manifest, "test")
    return DatasetDescription(
        root=root,
        layout=manifest.layout,
        manifest=manifest.path,
        channel_names=manifest.channel_names,
        labels=manifest.labels,
        training=training,
        test=test,
        name=str(manifest.name or root.name),
    )
