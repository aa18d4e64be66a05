"""Guards that stop a model from silently segmenting the wrong kind of image.

:class:`CheckModalityd` goes right after the loader of an inference pipeline: a DICOM input whose Modality (or
BodyPartExamined, when the bundle declares body parts) is not what the model was trained on is refused with one line
naming the input; an input without a modality (NIfTI) whose intensities look like another modality gets a warning.
The checks and their limits are in :mod:`monai_unet2.data.modality`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_unet2.data.modality import (
    ExpectedInput,
    ModalityMismatchError,
    dicom_mismatch,
    dicom_modality,
    input_header,
    intensity_mismatch,
)

__all__ = ["CheckModalityD", "CheckModalityDict", "CheckModalityd"]

logger = logging.getLogger(__name__)

FORCE_HINT = "refusing to segment it; pass --force_modality True to segment it anyway"


class CheckModalityd(MapTransform):
    """Refuse DICOM inputs of another modality or body part than the model's; warn about NIfTI inputs whose
    intensities look like another modality.

    The expectation comes from the bundle's ``metadata.json`` (``network_data_format.inputs.image.modality`` and the
    optional ``body_part_examined``), or from ``modality`` / ``body_parts``. For a DICOM input the Modality the reader
    recorded (``Modality`` in the metadata) and the BodyPartExamined of one slice header are compared; an input
    without a modality is judged by its intensities (:func:`~monai_unet2.data.modality.intensity_mismatch`).
    Values are not changed. In a bundle::

        {"_target_": "monai_unet2.transforms.CheckModalityd", "keys": "image",
         "bundle_metadata": "$monai_unet2.bundle_config.read_metadata(@bundle_root)", "force": "@force_modality"}

    Args:
        keys: keys of the loaded images (MetaTensors, before any intensity transform).
        bundle_metadata: the bundle's parsed ``metadata.json``.
        modality: the expected modality (``"MR"``, ``"CT"``, ``"T2"``...), instead of the metadata's.
        body_parts: accepted BodyPartExamined values, instead of the metadata's.
        force: log the refusal as a warning and go on (``--force_modality True``).
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ModalityMismatchError: a DICOM input of another modality or body part, unless ``force``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        bundle_metadata: Mapping[str, Any] | None = None,
        modality: str | None = None,
        body_parts: Sequence[str] | None = None,
        force: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        expected = ExpectedInput.from_metadata(bundle_metadata or {})
        if modality is not None:
            expected = ExpectedInput(dicom_modality(modality), modality, expected.body_parts)
        if body_parts is not None:
            expected = ExpectedInput(expected.modality, expected.declared, tuple(p.upper() for p in body_parts))
        self.expected = expected
        self.force = force
        if expected.modality is None and expected.declared:
            logger.debug("CheckModalityd: declared modality %r is not checked", expected.declared)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.check(d[key])
        return d

    def check(self, image: Any) -> None:
        """Refuse or warn about one image (see the class docstring)."""
        meta = image.meta if isinstance(image, MetaTensor) else {}
        source = meta.get("filename_or_obj", "")
        source = os.fspath(source[0] if isinstance(source, (list, tuple)) else source) if source else "input"
        modality = str(meta.get("Modality", "") or "")
        header = input_header(source, meta.get("SeriesInstanceUID")) if os.path.exists(source) else None
        if header is not None:
            modality = modality or str(header.get("Modality", "") or "")
        if modality:
            body_part = str(header.get("BodyPartExamined", "") or "") if header is not None else ""
            problem = dicom_mismatch(source, modality, body_part, self.expected)
            if problem is None:
                return
            if not self.force:
                raise ModalityMismatchError(f"{problem}; {FORCE_HINT}")
            logger.warning("%s; segmenting it anyway (force_modality)", problem)
            return
        values = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        problem = intensity_mismatch(source, values, self.expected)
        if problem is not None:
            logger.warning("%s; check the input (the output may be meaningless)", problem)


CheckModalityD = CheckModalityDict = CheckModalityd
