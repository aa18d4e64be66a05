"""The ``dataset.json`` of a segmentation dataset, in either of the two layouts researchers bring.

- nnU-Net v2 raw: ``channel_names`` (``{"0": "T2", "1": "ADC"}``), ``labels`` as name -> value
  (``{"background": 0, "tumour": 1}``), ``file_ending`` (``".nii.gz"``), ``numTraining``, and optionally
  ``dataset`` (``{case: {"images": [...], "label": ...}}``) instead of the ``imagesTr/<case>_0000<ending>`` naming.
- Medical Segmentation Decathlon (nnU-Net v1): ``modality`` (``{"0": "FLAIR", ...}``), ``labels`` as value -> name
  (``{"0": "background", "1": "edema"}``), ``training`` (``[{"image": ..., "label": ...}]``, an image may be a 4D
  file or a list of files, one per channel) and ``test`` (paths, or entries with an ``image``).

MONAI's ``load_decathlon_datalist`` reads the Decathlon form only, raises a bare ``KeyError`` / ``TypeError`` on an
entry without ``label`` or given as a plain string, and ignores ``modality`` and ``labels``. Here both forms become
one description (:class:`DatasetManifest`), and every malformed entry is refused with a message that names
``dataset.json``, the entry and what is wrong.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DatalistError", "DatasetManifest", "read_manifest"]

logger = logging.getLogger(__name__)

MANIFEST = "dataset.json"


class DatalistError(ValueError):
    """A datalist entry or dataset folder that cannot be used; the message names the file and the problem."""


@dataclass
class DatasetManifest:
    """What a ``dataset.json`` says, in one form for both layouts.

    Attributes:
        path: the ``dataset.json`` file, or ``None`` when the dataset has none.
        layout: ``"nnunet"`` (nnU-Net v2 raw), ``"msd"`` (Decathlon) or ``"folders"`` (no ``dataset.json``).
        channel_names: input channel index -> name (``{"0": "T1c"}``); empty when the file does not say.
        labels: label value -> name, background included (``{"0": "background", "1": "tumour"}``); empty when the
            file does not say.
        file_ending: the image file ending (nnU-Net), e.g. ``".nii.gz"``; ``None`` for other layouts.
        training: entries ``{"image": str | list[str], "label": str}`` with paths relative to the dataset root;
            ``None`` when the cases are to be found in ``imagesTr/``.
        test: entries ``{"image": ...}`` of the test images, or ``None`` when they are to be found in ``imagesTs/``.
        name: the dataset's name, when given.
    """

    path: Path | None
    layout: str
    channel_names: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    file_ending: str | None = None
    training: list[dict[str, Any]] | None = None
    test: list[dict[str, Any]] | None = None
    name: str | None = None


def _index_map(value: Any, where: str) -> dict[str, str]:
    """``{"0": "T1", "1": "T2"}`` checked: keys 0..n-1, names strings."""
    if not isinstance(value, Mapping) or not value:
        raise DatalistError(f'{where} must be a non-empty object {{"0": name, ...}}, got {value!r}')
    try:
        indices = sorted(int(key) for key in value)
    except ValueError as error:
        raise DatalistError(f"{where} keys must be channel indices 0, 1, ...; got {sorted(value)}") from error
    if indices != list(range(len(indices))):
        raise DatalistError(f"{where} keys must be 0, 1, ..., n-1; got {sorted(value)}")
    return {str(index): str(value[str(index)] if str(index) in value else value[index]) for index in indices}


def _labels(value: Any, where: str) -> dict[str, str]:
    """Labels in either form (nnU-Net name -> value or Decathlon value -> name) as value -> name, checked.

    nnU-Net's region-based labels (``"whole tumour": [1, 2, 3]``) name unions of the values stored in the label
    files; this pipeline trains one class per stored value (softmax), so a value that no plain label names gets
    ``label_<value>`` and a warning lists the regions.
    """
    if not isinstance(value, Mapping) or not value:
        raise DatalistError(f"{where} must be a non-empty object, got {value!r}")
    by_value: dict[int, str] = {}
    regions: dict[str, list[int]] = {}
    for key, item in value.items():
        if isinstance(item, (list, tuple)):
            if not item or not all(_is_int(v) and not isinstance(v, bool) for v in item):
                raise DatalistError(f"{where}: region {key!r} must list label values, got {item!r}")
            regions[str(key)] = sorted(int(v) for v in item)
            continue
        if isinstance(item, bool):
            raise DatalistError(f"{where}: label {key!r} has the value {item!r}; expected an integer")
        if isinstance(item, int) or (isinstance(item, str) and item.strip().lstrip("-").isdigit() and not _is_int(key)):
            number, name = int(item), str(key)  # nnU-Net v2: name -> value
        elif _is_int(key):
            number, name = int(key), str(item)  # Decathlon: value -> name
        else:
            raise DatalistError(f"{where}: cannot read the entry {key!r}: {item!r} as a label value and its name")
        if number in by_value:
            raise DatalistError(f"{where}: value {number} is given twice ({by_value[number]!r} and {name!r})")
        by_value[number] = name
    if regions:
        for number in sorted({v for values in regions.values() for v in values} - set(by_value)):
            by_value[number] = f"label_{number}"
        logger.warning(
            "%s: region-based labels %s are trained as one class per stored value: %s",
            where,
            regions,
            {number: by_value[number] for number in sorted(by_value)},
        )
    values = sorted(by_value)
    if values != list(range(len(values))):
        raise DatalistError(f"{where}: label values must be 0 (background), 1, ..., n-1 without gaps; got {values}")
    if any(name.lower() == "ignore" for name in by_value.values()):
        raise DatalistError(f"{where}: nnU-Net's 'ignore' label (sparse annotation) is not supported")
    return {str(number): by_value[number] for number in values}


def _is_int(text: Any) -> bool:
    return isinstance(text, int) or (isinstance(text, str) and text.strip().lstrip("-").isdigit())


def _image_value(value: Any, where: str) -> str | list[str]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, str) and item for item in value):
        return list(value) if len(value) > 1 else value[0]
    raise DatalistError(f"{where}: 'image' must be a path or a list of paths (one per channel), got {value!r}")


def _training_entries(entries: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise DatalistError(f'{where} must be a list of {{"image": ..., "label": ...}} entries, got {entries!r}')
    cases = []
    for index, entry in enumerate(entries):
        here = f"{where}[{index}]"
        if isinstance(entry, str):
            raise DatalistError(
                f"{here} is a plain path ({entry!r}); training entries need an image and its label: "
                '{"image": "./imagesTr/case.nii.gz", "label": "./labelsTr/case.nii.gz"}'
            )
        if not isinstance(entry, Mapping) or "image" not in entry:
            raise DatalistError(f"{here} has no 'image': {entry!r}")
        if "label" not in entry or not isinstance(entry["label"], str) or not entry["label"]:
            raise DatalistError(f"{here} ({entry.get('image')!r}) has no 'label' path; every training case needs one")
        cases.append({"image": _image_value(entry["image"], here), "label": entry["label"]})
    return cases


def _test_entries(entries: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise DatalistError(f'{where} must be a list of paths or {{"image": ...}} entries, got {entries!r}')
    cases = []
    for index, entry in enumerate(entries):
        here = f"{where}[{index}]"
        if isinstance(entry, Mapping):
            if "image" not in entry:
                raise DatalistError(f"{here} has no 'image': {entry!r}")
            case = {"image": _image_value(entry["image"], here)}
            if isinstance(entry.get("label"), str) and entry["label"]:
                case["label"] = entry["label"]
            cases.append(case)
        else:
            cases.append({"image": _image_value(entry, here)})
    return cases


def _nnunet_dataset(entries: Any, where: str) -> list[dict[str, Any]]:
    """nnU-Net v2's explicit ``dataset`` key: ``{case: {"images": [...], "label": ...}}``."""
    if not isinstance(entries, Mapping):
        raise DatalistError(f'{where} must map case names to {{"images": [...], "label": ...}}, got {entries!r}')
    cases = []
    for case, entry in sorted(entries.items()):
        here = f"{where}[{case!r}]"
        if not isinstance(entry, Mapping) or "images" not in entry:
            raise DatalistError(f"{here} has no 'images' list")
        if not isinstance(entry.get("label"), str):
            raise DatalistError(f"{here} has no 'label' path")
        cases.append({"case": str(case), "image": _image_value(entry["images"], here), "label": entry["label"]})
    return cases


def read_manifest(root: str | Path) -> DatasetManifest:
    """The ``dataset.json`` of the dataset at ``root``, in either layout; ``layout="folders"`` when there is none.

    Args:
        root: the dataset folder.

    Raises:
        DatalistError: invalid JSON, or an entry that cannot be used (named with its index).
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        return DatasetManifest(path=None, layout="folders")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatalistError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(content, Mapping):
        raise DatalistError(f"{path} must hold a JSON object, got {type(content).__name__}")
    if "channel_names" in content or "file_ending" in content:
        layout = "nnunet"
        channels = content.get("channel_names")
    elif "training" in content or "modality" in content:
        layout = "msd"
        channels = content.get("modality")
    else:
        raise DatalistError(
            f"{path}: neither an nnU-Net v2 dataset.json (channel_names, labels, file_ending) nor a Decathlon one "
            f"(modality, labels, training); keys: {sorted(content)}"
        )
    manifest = DatasetManifest(path=path, layout=layout, name=content.get("name"))
    if channels is not None:
        manifest.channel_names = _index_map(
            channels, f"{path}: {'channel_names' if layout == 'nnunet' else 'modality'}"
        )
    if "labels" in content:
        manifest.labels = _labels(content["labels"], f"{path}: labels")
    if layout == "nnunet":
        ending = content.get("file_ending", ".nii.gz")
        if not isinstance(ending, str) or not ending.startswith("."):
            raise DatalistError(f"{path}: file_ending must be like '.nii.gz', got {ending!r}")
        manifest.file_ending = ending
        if "dataset" in content:
            manifest.training = _nnunet_dataset(content["dataset"], f"{path}: dataset")
    else:
        if "training" in content:
            manifest.training = _training_entries(content["training"], f"{path}: training")
        if content.get("test"):
            manifest.test = _test_entries(content["test"], f"{path}: test")
    return manifest
