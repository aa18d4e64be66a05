"""Evaluation reports named by label: per-case Dice and HD95 of every foreground label, a missing prediction scored as
such, a summary JSON.

MONAI's ``MetricsSaver`` names the classes ``class0, class1, ...`` (for labels 1, 2, ...), and its ``DiceMetric`` /
``HausdorffDistanceMetric`` give NaN whenever the reference or the prediction of a class is empty, which the
summary's ``nanmean`` then drops: a model that never predicts a structure loses nothing in the mean HD95, and a
structure predicted where there is none costs no Dice. :class:`LabelMetricsReport` scores every case and label by
the conventions of nnU-Net and of the Metrics Reloaded recommendations (Maier-Hein et al., Nat. Methods 2024):

============================  ========  ===============================================================
reference / prediction        Dice      HD95
============================  ========  ===============================================================
both non-empty                computed  computed, in mm on the evaluated grid
reference only (missed)       0         the volume's diagonal in mm (the worst possible distance)
prediction only (spurious)    0         the volume's diagonal in mm
both empty (label absent)     NaN       NaN: undefined, left out of the means and counted as ``absent``
============================  ========  ===============================================================
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from monai_unet2.distributed import gather_objects, is_rank0

__all__ = ["CONVENTIONS", "LabelMetricsReport", "case_label_metrics"]

logger = logging.getLogger(__name__)

CONVENTIONS = {
    "missed": "label in the reference, not predicted: Dice 0, HD95 = the volume's diagonal (mm)",
    "spurious": "label predicted, not in the reference: Dice 0, HD95 = the volume's diagonal (mm)",
    "absent": "label in neither: Dice and HD95 undefined (NaN), left out of the means",
    "grid": "metrics are computed on the grid the network predicts on (plans.json spacing), distances in mm",
}


def case_label_metrics(prediction: torch.Tensor, reference: torch.Tensor, spacing: Sequence[float]) -> dict[str, Any]:
    """Dice and HD95 of one label of one case, with the conventions of the module docstring.

    Args:
        prediction: binary mask of the label, spatial dims only.
        reference: binary mask of the label in the reference, same shape.
        spacing: voxel size in mm along each spatial dim.

    Returns:
        ``{"dice": float, "hd95": float, "outcome": "matched" | "missed" | "spurious" | "absent"}``.
    """
    predicted, present = bool(prediction.any()), bool(reference.any())
    if not predicted and not present:
        return {"dice": math.nan, "hd95": math.nan, "outcome": "absent"}
    if predicted != present:
        diagonal = math.sqrt(sum((size * step) ** 2 for size, step in zip(prediction.shape, spacing)))
        return {"dice": 0.0, "hd95": diagonal, "outcome": "missed" if present else "spurious"}
    overlap = float(torch.logical_and(prediction, reference).sum())
    dice = 2.0 * overlap / float(prediction.sum() + reference.sum())
    hd95 = compute_hausdorff_distance(
        prediction[None, None].float(), reference[None, None].float(), percentile=95, spacing=list(spacing)
    )
    return {"dice": dice, "hd95": float(hd95.reshape(-1)[0]), "outcome": "matched"}


def _summary(values: list[float]) -> dict[str, float | int]:
    array = np.asarray(values, dtype=np.float64)
    defined = array[~np.isnan(array)]
    if not len(defined):
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": float(defined.mean()),
        "median": float(np.median(defined)),
        "std": float(defined.std()),
        "min": float(defined.min()),
        "max": float(defined.max()),
        "n": len(defined),
    }


def _nanmean(values: Sequence[float]) -> float:
    defined = [value for value in values if not math.isnan(value)]
    return float(np.mean(defined)) if defined else math.nan


class LabelMetricsReport:
    """Score an evaluator's cases per label and write the report when it completes.

    Attach it to a ``SupervisedEvaluator`` whose post-processing gives one-hot ``pred`` and ``label`` (channel 0
    background); put it before ``StatsHandler`` in the handler list so that the means it adds to
    ``engine.state.metrics`` (``dice_<label>``, ``hd95_<label>``, ``mean_dice``, ``mean_hd95``) are logged. It
    writes into ``output_dir``:

    - ``dice_raw.csv`` and ``hd95_raw.csv``: one row per case (``filename``), one column per label name, and
      ``mean`` (over the labels defined for that case);
    - ``dice_summary.csv`` and ``hd95_summary.csv``: mean, median, std, min, max and count per label and overall;
    - ``summary.json``: the same per label, the counts of missed, spurious and absent labels, the conventions
      (:data:`CONVENTIONS`) and ``details`` passed by the caller (e.g. the checkpoints and the split evaluated).

    Rows are in the order of the evaluator's datalist. Under torchrun (``configs/multi_gpu_evaluate.json``, a
    ``DistributedSampler`` giving each rank its share) every rank scores its own cases, the rows are gathered in
    datalist order (each row knows its dataset index from the sampler), and rank 0 alone writes: one report, equal to
    a single process's. It therefore runs on every rank (``rank_zero_only = False``).

    Args:
        labels: label value -> name, background included (``metadata.json`` ``channel_def``).
        output_dir: the report folder (created).
        details: extra facts for ``summary.json``.
        pred_key: key of the one-hot prediction in the engine output.
        label_key: key of the one-hot reference.
    """

    def __init__(
        self,
        labels: Mapping[str, str],
        output_dir: str | os.PathLike,
        details: Mapping[str, Any] | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
    ) -> None:
        self.labels = {int(value): str(name) for value, name in labels.items() if int(value) != 0}
        self.output_dir = os.fspath(output_dir)
        self.details = dict(details or {})
        self.pred_key = pred_key
        self.label_key = label_key
        self.rows: list[dict[str, Any]] = []
        self.indices: list[int] = []
        self._order: list[int] = []

    rank_zero_only = False  # gathers the rows of every rank (monai_unet2.distributed.rank_zero_handlers)

    def attach(self, engine: Any) -> None:
        """Reset at each run, score each iteration's cases, report at the end of the run."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Any) -> None:
        """Forget the last run's rows; note which dataset indices this process evaluates, in order."""
        self.rows.clear()
        self.indices.clear()
        sampler = getattr(getattr(engine, "data_loader", None), "sampler", None)
        self._order = [int(index) for index in sampler] if sampler is not None else []

    def iteration_completed(self, engine: Any) -> None:
        """Score the cases of the last batch."""
        outputs = engine.state.output
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        batch_size = getattr(getattr(engine, "data_loader", None), "batch_size", None) or len(outputs)
        first = (engine.state.iteration - 1) % max(engine.state.epoch_length or 1, 1) * batch_size
        for offset, item in enumerate(outputs):
            position = first + offset
            self.indices.append(self._order[position] if position < len(self._order) else position)
            self.rows.append(self.score(item[self.pred_key], item[self.label_key]))

    def score(self, prediction: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
        """One case's metrics per label (``prediction``/``reference`` one-hot, channel first)."""
        meta = getattr(prediction, "meta", {}) or getattr(reference, "meta", {})
        spacing = getattr(prediction, "pixdim", None)
        spatial = prediction.shape[1:]
        steps = [float(s) for s in spacing][: len(spatial)] if spacing is not None else [1.0] * len(spatial)
        row: dict[str, Any] = {"filename": str(meta.get("filename_or_obj", len(self.rows)))}
        for value, name in self.labels.items():
            row[name] = case_label_metrics(prediction[value] > 0.5, reference[value] > 0.5, steps)
        return row

    def _write_table(self, metric: str) -> None:
        names = list(self.labels.values())
        with open(os.path.join(self.output_dir, f"{metric}_raw.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", *names, "mean"])
            for row in self.rows:
                values = [row[name][metric] for name in names]
                writer.writerow([row["filename"], *(f"{v:.4f}" for v in values), f"{_nanmean(values):.4f}"])
        with open(os.path.join(self.output_dir, f"{metric}_summary.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["label", "mean", "median", "std", "min", "max", "n"])
            per_case_mean = [_nanmean([row[name][metric] for name in names]) for row in self.rows]
            for name, values in [*((n, [row[n][metric] for row in self.rows]) for n in names), ("mean", per_case_mean)]:
                summary = _summary(values)
                writer.writerow(
                    [name, *(f"{summary[k]:.4f}" for k in ("mean", "median", "std", "min", "max")), summary["n"]]
                )

    def summary(self) -> dict[str, Any]:
        """The content of ``summary.json``."""
        labels = {}
        for name in self.labels.values():
            outcomes = [row[name]["outcome"] for row in self.rows]
            labels[name] = {
                "dice": _summary([row[name]["dice"] for row in self.rows]),
                "hd95_mm": _summary([row[name]["hd95"] for row in self.rows]),
                **{outcome: outcomes.count(outcome) for outcome in ("missed", "spurious", "absent")},
            }
        return {
            "cases": len(self.rows),
            "labels": labels,
            "mean": {
                "dice": _nanmean([entry["dice"]["mean"] for entry in labels.values()]),
                "hd95_mm": _nanmean([entry["hd95_mm"]["mean"] for entry in labels.values()]),
            },
            "conventions": CONVENTIONS,
            **self.details,
        }

    def gather(self) -> None:
        """Collect the rows of every rank into :attr:`rows`, in datalist order (a no-op in one process: its rows
        are in that order already)."""
        shares = gather_objects(list(zip(self.indices, self.rows)))
        ordered = sorted((pair for share in shares for pair in share), key=lambda pair: pair[0])
        self.indices = [index for index, _ in ordered]
        self.rows = [row for _, row in ordered]

    def epoch_completed(self, engine: Any) -> None:
        """Gather every rank's rows, write the report (rank 0) and put the means into ``engine.state.metrics``."""
        self.gather()
        summary = self.summary()
        if is_rank0():
            os.makedirs(self.output_dir, exist_ok=True)
            for metric in ("dice", "hd95"):
                self._write_table(metric)
            with open(os.path.join(self.output_dir, "summary.json"), "w") as handle:
                json.dump(summary, handle, indent=2, allow_nan=True)
        for name, entry in summary["labels"].items():
            engine.state.metrics[f"dice_{name}"] = entry["dice"]["mean"]
            engine.state.metrics[f"hd95_{name}"] = entry["hd95_mm"]["mean"]
            if (entry["missed"] or entry["spurious"]) and is_rank0():
                logger.warning(f"{name}: missed in {entry['missed']} case(s), spurious in {entry['spurious']}")
        engine.state.metrics["mean_dice"] = summary["mean"]["dice"]
        engine.state.metrics["mean_hd95"] = summary["mean"]["hd95_mm"]
        logger.info(f"evaluation report of {summary['cases']} case(s) written to {self.output_dir}")
