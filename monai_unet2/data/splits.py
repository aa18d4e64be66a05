"""Case-level cross-validation folds, written as ``splits.json`` in nnU-Net's ``splits_final.json`` format.

``splits.json`` is a list with one ``{"train": [case, ...], "val": [case, ...]}`` per fold, so a split made here can
be given to nnU-Net and the other way round. Two ways to make one (:func:`make_splits`):

- ``"interleaved"`` (default): the cases sorted by name, fold ``k`` validates on positions ``k, k + K, k + 2K, ...``.
  Deterministic without a seed, and fold 0 of five is the "every 5th case" validation split the shipped bundles
  were developed and reported on.
- ``"random"``: nnU-Net's way, the sorted cases shuffled with ``seed`` and cut into ``K`` folds (as
  ``sklearn.model_selection.KFold(shuffle=True, random_state=seed)`` would; numpy only, no scikit-learn needed).

A case is one patient volume, so all of a case's channels stay in the same fold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_unet2.data.dataset_json import DatalistError

__all__ = ["SPLIT_METHODS", "fold_cases", "make_splits", "read_splits"]

SPLIT_METHODS = ("interleaved", "random")


def make_splits(
    cases: Sequence[str], num_folds: int = 5, method: str = "interleaved", seed: int = 12345
) -> list[dict[str, list[str]]]:
    """``num_folds`` case-level folds of ``cases`` (fewer when there are fewer cases).

    With a single case there is nothing to hold out: its one fold trains and validates on it.

    Args:
        cases: case names.
        num_folds: K; at most the number of cases.
        method: ``"interleaved"`` or ``"random"`` (see the module docstring).
        seed: the shuffling seed of ``"random"`` (nnU-Net uses 12345).

    Returns:
        one ``{"train": [...], "val": [...]}`` per fold, names sorted.
    """
    if method not in SPLIT_METHODS:
        raise ValueError(f"split method must be one of {SPLIT_METHODS}, got {method!r}")
    if num_folds < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}")
    ordered = sorted(set(cases))
    if len(ordered) != len(cases):
        raise DatalistError(f"case names must be unique; repeated: {sorted({c for c in cases if cases.count(c) > 1})}")
    if not ordered:
        raise DatalistError("no cases to split")
    if len(ordered) == 1:
        return [{"train": list(ordered), "val": list(ordered)}]
    folds = min(num_folds, len(ordered))
    if method == "interleaved":
        assignment = [index % folds for index in range(len(ordered))]
    else:
        order = np.random.RandomState(seed).permutation(len(ordered))
        assignment = [0] * len(ordered)
        for fold, members in enumerate(np.array_split(order, folds)):
            for index in members:
                assignment[int(index)] = fold
    return [
        {
            "train": [case for case, f in zip(ordered, assignment) if f != fold],
            "val": [case for case, f in zip(ordered, assignment) if f == fold],
        }
        for fold in range(folds)
    ]


def read_splits(path: str | os.PathLike) -> list[dict[str, list[str]]]:
    """The folds of a ``splits.json`` (nnU-Net ``splits_final.json`` format), checked.

    Args:
        path: the file.

    Raises:
        DatalistError: a missing or malformed file.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise DatalistError(f"{path} does not exist: plan the bundle (python -m monai_unet2 plan)") from error
    except json.JSONDecodeError as error:
        raise DatalistError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(content, list) or not content:
        raise DatalistError(f'{path} must be a list of {{"train": [...], "val": [...]}} folds')
    for index, fold in enumerate(content):
        if (
            not isinstance(fold, dict)
            or not isinstance(fold.get("train"), list)
            or not isinstance(fold.get("val"), list)
        ):
            raise DatalistError(f'{path}: fold {index} must be {{"train": [case, ...], "val": [case, ...]}}')
    return content


def fold_cases(splits: Sequence[dict[str, list[str]]], fold: int | str, split: str) -> list[str]:
    """The case names of ``split`` in ``fold``.

    Args:
        splits: the folds.
        fold: a fold index, or ``"all"``: training on every case; its ``"validation"`` is fold 0's validation cases
            (already seen in training: they only track the run and select nothing).
        split: ``"training"``, ``"validation"`` or ``"all"``.
    """
    if split not in ("training", "validation", "all"):
        raise ValueError(f"split must be 'training', 'validation' or 'all', got {split!r}")
    every = sorted({case for item in splits for case in item["train"] + item["val"]})
    if split == "all":
        return every
    if str(fold) == "all":
        return every if split == "training" else sorted(splits[0]["val"])
    try:
        index = int(fold)
    except (TypeError, ValueError) as error:
        raise ValueError(f"fold must be an integer or 'all', got {fold!r}") from error
    if not 0 <= index < len(splits):
        raise ValueError(f"fold {index} does not exist: the splits have folds 0..{len(splits) - 1} and 'all'")
    return sorted(splits[index]["train" if split == "training" else "val"])
