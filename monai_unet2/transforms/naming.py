"""Name a loaded case after the case, not after its first channel file, so that outputs are named after the case.

MONAI's ``LoadImage`` records the first file as ``filename_or_obj`` when it stacks one file per channel, so a
segmentation of nnU-Net's ``case_0000.nii.gz`` + ``case_0001.nii.gz`` would be written as ``case_0000_seg.nii.gz``
and a per-case metrics table would list ``case_0000``. :class:`CaseNamed` replaces it with
``<folder>/<case>.nii.gz`` when the datalist entry names the case (``"case"``, from
:func:`~monai_unet2.data.inference_datalist` and the training datalists); the original stays in
``channel_files``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CaseNameD", "CaseNameDict", "CaseNamed"]

_ENDINGS = (".nii.gz", ".nii")


def _stem(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    for ending in _ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


class CaseNamed(MapTransform):
    """Set ``filename_or_obj`` of the image to ``<folder of the first file>/<case>.nii.gz`` when the entry's
    ``case`` differs from the file's own name (per-channel files); entries without ``case``, single files named
    after their case and DICOM folders are left alone.

    Args:
        keys: the image keys (``MetaTensor`` after loading).
        case_key: the datalist key holding the case name.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(self, keys: KeysCollection = "image", case_key: str = "case", allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = d.get(self.case_key)
        if not isinstance(case, str) or not case:
            return d
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", None)
            source = meta.get("filename_or_obj") if isinstance(meta, dict) else None
            if not source or os.path.isdir(str(source)) or _stem(str(source)) == case:
                continue
            meta["channel_files"] = str(source)
            meta["filename_or_obj"] = os.path.join(os.path.dirname(str(source)), f"{case}.nii.gz")
        return d


CaseNameD = CaseNameDict = CaseNamed
