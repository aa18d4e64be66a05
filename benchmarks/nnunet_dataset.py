"""Our hippocampus split in nnU-Net v2's raw format, for ``benchmarks/vs_nnunet.py``.

Writes ``<nnUNet_raw>/Dataset004_Hippocampus`` (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``,
``dataset.json``) from an MSD folder, and ``splits_final.json`` whose fold 0 is exactly our split
(:func:`monai_unet2.data.msd_datalist`: training 160 cases, validation 40). Folds 1-4 continue the same rule
(case index modulo 5) so that nnU-Net's 5-fold cross-validation, if someone runs it, never mixes our folds.

Images are stored as float32 (the MSD copies hold uint8 or float32; the values are kept), labels as uint8 (a couple
are float32 in the source). Geometry (affine, qform/sform) is copied unchanged, so nnU-Net's predictions land on the
grid our evaluation reads the labels on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_unet2.data import msd_datalist

DATASET = "Dataset004_Hippocampus"
LABELS = {"background": 0, "anterior": 1, "posterior": 2}
VALIDATION_EVERY = 5


def case_id(image_path: str | os.PathLike) -> str:
    """nnU-Net's case identifier of an MSD image: the file name without ``.nii.gz``."""
    name = Path(image_path).name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem


def our_split(dataset_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """Our training and validation datalists, exactly as the bundle's ``train.json`` builds them."""
    return {split: msd_datalist(dataset_dir, split, VALIDATION_EVERY) for split in ("training", "validation")}


def _write_cast(source: str, target: Path, dtype: type, scratch: Path) -> None:
    """Write ``source`` cast to ``dtype`` as ``target``, through ``scratch`` so a killed run leaves no partial file
    where nnU-Net looks for cases."""
    image = nib.load(source)
    data = np.asanyarray(image.dataobj)
    if np.issubdtype(dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise ValueError(f"{source}: label holds non-integer values")
        data = rounded
    header = image.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    scratch.mkdir(parents=True, exist_ok=True)
    partial = scratch / target.name
    nib.save(nib.Nifti1Image(data.astype(dtype), image.affine, header), partial)
    partial.replace(target)


def convert(dataset_dir: str | os.PathLike, raw_root: Path) -> Path:
    """Write our 200 cases in nnU-Net's raw format; files already written are kept (the step resumes).

    Args:
        dataset_dir: the MSD hippocampus folder (``imagesTr``, ``labelsTr``).
        raw_root: ``nnUNet_raw``.

    Returns:
        the dataset folder.
    """
    split = our_split(dataset_dir)
    cases = sorted(split["training"] + split["validation"], key=lambda case: Path(case["image"]).name)
    folder = raw_root / DATASET
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in cases:
        name = case_id(case["image"])
        image_target = folder / "imagesTr" / f"{name}_0000.nii.gz"
        label_target = folder / "labelsTr" / f"{name}.nii.gz"
        if not image_target.is_file():
            _write_cast(case["image"], image_target, np.float32, raw_root / ".partial")
        if not label_target.is_file():
            _write_cast(case["label"], label_target, np.uint8, raw_root / ".partial")
    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": LABELS,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": "Hippocampus",
        "description": "MSD Task04 hippocampus, the 200 development cases of monai_unet2 (CC BY-SA 4.0)",
        "reference": "Simpson et al., arXiv:1902.09063; Antonelli et al., Nat. Commun. 13, 4128 (2022)",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def splits(dataset_dir: str | os.PathLike) -> list[dict[str, list[str]]]:
    """Five folds by case index modulo 5 in our sorted order; fold 0 is checked against :func:`our_split`."""
    split = our_split(dataset_dir)
    ordered = sorted(case_id(case["image"]) for case in split["training"] + split["validation"])
    folds = []
    for fold in range(VALIDATION_EVERY):
        val = [name for index, name in enumerate(ordered) if index % VALIDATION_EVERY == fold]
        folds.append({"train": [name for name in ordered if name not in set(val)], "val": val})
    ours = {
        "train": sorted(case_id(c["image"]) for c in split["training"]),
        "val": [case_id(c["image"]) for c in split["validation"]],
    }
    if sorted(folds[0]["train"]) != ours["train"] or sorted(folds[0]["val"]) != sorted(ours["val"]):
        raise AssertionError("fold 0 of splits_final.json differs from msd_datalist's training/validation split")
    return folds


def write_splits(dataset_dir: str | os.PathLike, preprocessed_root: Path) -> Path:
    """Write ``splits_final.json`` into nnU-Net's preprocessed dataset folder (after planning created it)."""
    target = preprocessed_root / DATASET / "splits_final.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(splits(dataset_dir), indent=2))
    return target
