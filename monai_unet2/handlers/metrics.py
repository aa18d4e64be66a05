"""Per-class metric plumbing for MONAI's metric handlers.

MONAI's ``MeanDice(reduction="mean_batch")`` puts a vector into ``engine.state.metrics``, which ``MLFlowHandler`` and
``StatsHandler`` cannot log as one number per class. Bundles therefore attach one ``MeanDice`` per class whose
``output_transform`` keeps only that class's channel; this module provides that transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.handlers import from_engine

__all__ = ["class_output_transform"]


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
