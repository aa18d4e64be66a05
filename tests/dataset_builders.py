"""Small real multi-channel datasets in the nnU-Net v2 and Decathlon layouts, built at test time from the committed
hippocampus sample (bundles/hippocampus_unet25d_segmentation/sample_data, MSD Task04, CC BY-SA 4.0).

Each case has two channels: the MR volume itself ("T1") and its intensity-inverted copy ("T1_inverted",
``max - image`` inside the volume), a second contrast that differs voxel for voxel but shares the anatomy, the grid
and the labels (0 background, 1 anterior, 2 posterior). Nothing generated is committed; a dataset of 6 training and
2 test cases is about 1 MB and takes well under a second to write.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation" / "sample_data"
CHANNELS = {"0": "T1", "1": "T1_inverted"}
LABELS = {"0": "background", "1": "anterior", "2": "posterior"}


def sample_cases() -> list[str]:
    """The committed sample cases, sorted (``hippocampus_004`` ...)."""
    return sorted(path.name[: -len(".nii.gz")] for path in (SAMPLE / "imagesTr").glob("*.nii.gz"))


def _channels(case: str) -> tuple[list[np.ndarray], nib.Nifti1Image]:
    image = nib.load(SAMPLE / "imagesTr" / f"{case}.nii.gz")
    data = np.asarray(image.dataobj, dtype=np.float32)
    return [data, data.max() - data], image


def _label(case: str) -> nib.Nifti1Image:
    label = nib.load(SAMPLE / "labelsTr" / f"{case}.nii.gz")
    return nib.Nifti1Image(np.asarray(label.dataobj).astype(np.uint8), label.affine)


def _split(training: int, test: int) -> tuple[list[str], list[str]]:
    cases = sample_cases()
    if training + test > len(cases):
        raise ValueError(f"the sample has {len(cases)} cases, asked for {training} + {test}")
    return cases[:training], cases[training : training + test]


def nnunet_dataset(root: Path, training: int = 6, test: int = 2) -> Path:
    """An nnU-Net v2 raw dataset: ``imagesTr/<case>_0000.nii.gz`` and ``_0001``, ``labelsTr/<case>.nii.gz``,
    ``imagesTs``/``labelsTs`` in the same naming, ``dataset.json`` with ``channel_names``, ``labels`` (name -> value)
    and ``file_ending``.

    Args:
        root: the dataset folder to create.
        training: number of training cases.
        test: number of test cases.
    """
    train_cases, test_cases = _split(training, test)
    for folder, cases in (("Tr", train_cases), ("Ts", test_cases)):
        (root / f"images{folder}").mkdir(parents=True)
        (root / f"labels{folder}").mkdir()
        for case in cases:
            channels, image = _channels(case)
            for index, data in enumerate(channels):
                nib.save(nib.Nifti1Image(data, image.affine), root / f"images{folder}" / f"{case}_{index:04d}.nii.gz")
            nib.save(_label(case), root / f"labels{folder}" / f"{case}.nii.gz")
    manifest = {
        "name": "Hippocampus2Channel",
        "channel_names": CHANNELS,
        "labels": {name: int(value) for value, name in LABELS.items()},
        "numTraining": len(train_cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return root


def msd_dataset(root: Path, training: int = 6, test: int = 2) -> Path:
    """A Medical Segmentation Decathlon dataset: 4D NIfTI images with the channels last, ``dataset.json`` with
    ``modality``, ``labels`` (value -> name), ``training`` and ``test``; ``labelsTs`` added for evaluation.

    Args:
        root: the dataset folder to create.
        training: number of training cases.
        test: number of test cases.
    """
    train_cases, test_cases = _split(training, test)
    for folder, cases in (("Tr", train_cases), ("Ts", test_cases)):
        (root / f"images{folder}").mkdir(parents=True)
        (root / f"labels{folder}").mkdir()
        for case in cases:
            channels, image = _channels(case)
            nib.save(
                nib.Nifti1Image(np.stack(channels, axis=-1), image.affine), root / f"images{folder}" / f"{case}.nii.gz"
            )
            nib.save(_label(case), root / f"labels{folder}" / f"{case}.nii.gz")
    manifest = {
        "name": "Hippocampus2Channel4D",
        "modality": CHANNELS,
        "labels": LABELS,
        "numTraining": len(train_cases),
        "training": [
            {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"} for case in train_cases
        ],
        "test": [f"./imagesTs/{case}.nii.gz" for case in test_cases],
    }
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return root
