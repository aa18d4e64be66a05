"""Metric plumbing for MONAI's metric handlers: per-class channels, pixels inside a field of view.

MONAI's ``MeanDice(reduction="mean_batch")`` puts a vector into ``engine.state.metrics``, which ``MLFlowHandler`` and
``StatsHandler`` cannot log as one number per class. Bundles therefore attach one ``MeanDice`` per class whose
``output_transform`` keeps only that class's channel (:func:`class_output_transform`).

Retinal vessel papers report accuracy and AUC over the pixels inside the camera's field of view (FOV) only: the dark
border outside it is trivially background and would inflate both. :func:`fov_pixels` hands MONAI's ``ROCAUC`` and
``ConfusionMatrix`` handlers exactly those pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.handlers import from_engine

__all__ = ["class_output_transform", "fov_pixels"]


def class_output_transform(
    class_index: int, pred_key: str = "pred", label_key: str = "label"
) -> Callable[[Sequence[dict] | dict], tuple[list[Any], list[Any]]]:
    """An ``output_transform`` for MONAI metric handlers that selects one one-hot channel of prediction and label.

    Args:
        class_index: the channel (class) to keep, e.g. 1 for "anterior".
        pred_key: key of the one-hot prediction in the engine output.
        label_key: key of the one-hot label in the engine output.

    Returns:
        a callable mapping the decollated engine output to ``(preds, labels)`` with one channel each; use it with
        ``include_background=True`` since the kept channel is the only one.
    """
    select = from_engine([pred_key, label_key])
    keep = slice(class_index, class_index + 1)

    def transform(output: Sequence[dict] | dict) -> tuple[list[Any], list[Any]]:
        preds, labels = select(output)
        return [pred[keep] for pred in preds], [label[keep] for label in labels]

    return transform


def fov_pixels(
    pred_key: str = "pred", label_key: str = "label", mask_key: str = "fov", per_pixel: bool = False
) -> Callable[[Sequence[dict] | dict], tuple[torch.Tensor, torch.Tensor]]:
    """An ``output_transform`` that keeps the pixels inside the field of view (channel 0 of each item).

    ``per_pixel=True`` gives ``(n, 1)`` tensors, one row per pixel, for ``ROCAUC`` (``pred_key`` = the
    probabilities): every image's pixels are pooled into one AUC, as the DRIVE literature reports it. The default
    gives one ``(1, 1, n)`` sample for ``ConfusionMatrix(metric_name="accuracy", compute_sample=True)`` (``pred_key`` =
    the thresholded prediction): the mean of the per-image accuracies (with batch size 1, as in validation).

    Args:
        pred_key: key of the single-channel prediction (probability or binary) in the engine output.
        label_key: key of the binary label.
        mask_key: key of the field-of-view mask (non-zero inside).
        per_pixel: the layout for ``ROCAUC`` instead of ``ConfusionMatrix``.
    """
    select = from_engine([pred_key, label_key, mask_key])

    def transform(output: Sequence[dict] | dict) -> tuple[torch.Tensor, torch.Tensor]:
        preds, labels, masks = select(output)
        inside = [torch.as_tensor(mask)[0] > 0 for mask in masks]
        pred = torch.cat([torch.as_tensor(p)[0][m].float() for p, m in zip(preds, inside)])
        label = torch.cat([torch.as_tensor(y)[0][m].float() for y, m in zip(labels, inside)])
        shape = (-1, 1) if per_pixel else (1, 1, -1)
        return pred.reshape(shape), label.reshape(shape)

    return transform
