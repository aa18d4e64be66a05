"""Does an input match the kind of image a model was trained on? The modality guard's data-level checks.

A segmentation network segments whatever it is given: the hippocampus MR model, run on an abdominal CT, wrote a
valid DICOM SEG with 29,729 voxels of "hippocampus". A bundle declares what it expects in ``metadata.json``:
``network_data_format.inputs.image.modality`` (MONAI's own field) and, where it matters, ``body_part_examined``
beside it (a list of DICOM BodyPartExamined values, e.g. ``["BRAIN", "HEAD", "HEADNECK"]``).

- DICOM inputs carry their Modality (and often BodyPartExamined): a mismatch is refused
  (:func:`dicom_mismatch`), unless forced.
- NIfTI and other files carry no modality. Their intensities still tell CT from MR fairly reliably, in one
  direction each (:func:`intensity_mismatch`), so a mismatch there is a warning, never a refusal:

  - a CT in Hounsfield units contains air (about -1000 HU) outside the body, in the airways, lungs or bowel: on the
    two committed CT series 55 % and 65 % of the voxels lie at or below -500. MR magnitude images are not negative
    (all 200 MSD hippocampus volumes: lowest value 0). So an MR model warns when at least 1 % of the voxels lie at
    or below -500 ("CT-like").
  - a CT model warns when fewer than 0.1 % do ("no air": an MR, or a CT not in Hounsfield units). A CT cropped
    tightly inside the body has no air either and gets the warning too: that is the honest limit of the check.
  - other modalities (PET, ultrasound, photographs) have no such rule and are not checked.

The declared modality may be written as DICOM writes it (``MR``, ``CT``) or as datasets name channels (MSD's
``MRI``, ``T1w``, ``FLAIR``, nnU-Net's ``T2``, ``ADC``): :func:`dicom_modality` maps those to DICOM's codes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.misc import is_dicom

from monai_unet2.data.files import dicom_files
from monai_unet2.data.volumes import VolumeFileError

__all__ = [
    "AIR_HU",
    "ExpectedInput",
    "ModalityMismatchError",
    "dicom_mismatch",
    "dicom_modality",
    "input_header",
    "intensity_mismatch",
]

#: at or below this value (Hounsfield units) a CT voxel is air or lung
AIR_HU = -500.0
#: an MR model warns when at least this fraction of voxels is at or below :data:`AIR_HU`
CT_LIKE_FRACTION = 0.01
#: a CT model warns when less than this fraction is
NO_AIR_FRACTION = 0.001
_MR_NAMES = r"MR|MRI|T1|T1W|T1C|T1GD|T1CE|T2|T2W|T2STAR|FLAIR|ADC|DWI|PD|PDW|SWI|DCE|BOLD|CBF|MPRAGE"
_ALIASES = {"CT": "CT", "CTA": "CT", "CBCT": "CT", "PET": "PT", "PT": "PT", "US": "US", "XA": "XA", "OP": "OP"}


class ModalityMismatchError(VolumeFileError):
    """An input of another modality or body part than the model's; the message names the input and the switch."""


def dicom_modality(declared: str | None) -> str | None:
    """The DICOM Modality code of a declared modality (``"MRI"``, ``"T2"``, ``"FLAIR"`` -> ``"MR"``), or ``None``
    when it is not one the guard knows (``"color fundus photography"``).

    Args:
        declared: the modality as a bundle or dataset states it.
    """
    token = re.sub(r"[^0-9A-Z*]", "", str(declared or "").upper())
    if re.fullmatch(_MR_NAMES, token):
        return "MR"
    return _ALIASES.get(token)


@dataclass(frozen=True)
class ExpectedInput:
    """What a model expects: a DICOM modality and, optionally, body parts.

    Args:
        modality: DICOM Modality code, ``None`` when the declared one is not checkable.
        declared: the modality as the bundle states it (for messages).
        body_parts: accepted BodyPartExamined values (upper case); empty: any.
    """

    modality: str | None
    declared: str = ""
    body_parts: tuple[str, ...] = ()

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ExpectedInput:
        """From ``network_data_format.inputs.<first input>`` of a bundle's ``metadata.json``: ``modality`` and the
        optional ``body_part_examined`` (a string or a list)."""
        inputs = metadata.get("network_data_format", {}).get("inputs", {})
        tensor = next(iter(inputs.values()), {}) if inputs else {}
        declared = str(tensor.get("modality", "") or "")
        parts = tensor.get("body_part_examined") or ()
        parts = (parts,) if isinstance(parts, str) else tuple(parts)
        return cls(dicom_modality(declared), declared, tuple(str(p).strip().upper() for p in parts))


def input_header(source: str | os.PathLike, series_uid: str | None = None) -> pydicom.Dataset | None:
    """Modality and BodyPartExamined of a DICOM input (a series folder or one file), read from one slice header;
    ``None`` when ``source`` is not DICOM.

    Args:
        source: the input path (``filename_or_obj``).
        series_uid: the series the reader chose in a folder holding several.
    """
    path = os.fspath(source)
    if os.path.isdir(path):
        candidates: Any = dicom_files(path, log_ignored=False)
    elif os.path.isfile(path) and (path.lower().endswith(".dcm") or is_dicom(path)):
        candidates = [path]
    else:
        return None
    for candidate in candidates:
        try:
            header = pydicom.dcmread(
                candidate, stop_before_pixels=True, specific_tags=["Modality", "BodyPartExamined", "SeriesInstanceUID"]
            )
        except Exception:
            continue
        if "Modality" not in header:
            continue
        if series_uid and str(header.get("SeriesInstanceUID", "") or "") not in (series_uid, ""):
            continue
        return header
    return None


def dicom_mismatch(name: str, modality: str, body_part: str, expected: ExpectedInput) -> str | None:
    """Why a DICOM input does not fit the model, as one line naming it; ``None`` when it fits.

    An empty Modality or BodyPartExamined in the input is not a mismatch (nothing to compare).

    Args:
        name: the input, for the message.
        modality: its Modality.
        body_part: its BodyPartExamined.
        expected: what the model expects.
    """
    modality, body_part = modality.strip().upper(), body_part.strip().upper()
    if expected.modality and modality and modality != expected.modality:
        return (
            f"{name}: DICOM Modality {modality}, but this model was trained on {expected.modality} "
            f"(metadata.json declares '{expected.declared}')"
        )
    if expected.body_parts and body_part and body_part not in expected.body_parts:
        return (
            f"{name}: BodyPartExamined {body_part}, but this model segments {'/'.join(expected.body_parts)} "
            "(metadata.json body_part_examined)"
        )
    return None


def intensity_mismatch(name: str, intensities: np.ndarray, expected: ExpectedInput) -> str | None:
    """Why the intensities of an input without a modality look like another modality, or ``None`` (see the module
    docstring for the rule and its limits).

    Args:
        name: the input, for the message.
        intensities: the raw image (any shape; all channels).
        expected: what the model expects.
    """
    values = np.asarray(intensities)
    if expected.modality not in ("CT", "MR") or values.size == 0:
        return None
    air = float(np.count_nonzero(values <= AIR_HU)) / values.size
    lowest = float(np.nanmin(values))
    if expected.modality == "MR" and air >= CT_LIKE_FRACTION:
        return (
            f"{name}: {air:.0%} of the voxels are at or below {AIR_HU:g} (lowest {lowest:g}): this looks like a CT "
            "in Hounsfield units, but this model was trained on MR"
        )
    if expected.modality == "CT" and air < NO_AIR_FRACTION:
        return (
            f"{name}: no air (lowest value {lowest:g}, a CT in Hounsfield units has voxels near -1000): this looks "
            "like an MR or a CT not in Hounsfield units, but this model was trained on CT"
        )
    return None
