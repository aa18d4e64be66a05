"""Scoring for ``benchmarks/vs_nnunet.py``: our Dice on nnU-Net's files, our bundle's evaluation and inference.

Every Dice here is the one ``evaluate.json`` reports: the bundle's own validation preprocessing (loader, checks,
RAS, 1 mm, uint8 labels), one-hot, MONAI ``DiceMetric`` without background per case (``MeanDice`` wraps it), then
the mean over cases per class. A prediction file that is missing counts as Dice 0 for both classes.

monai_unet2 has no function that scores a folder of label files against a datalist; :func:`score_predictions` is
what such a package function (e.g. ``monai_unet2.evaluation.score_label_files(bundle_dir, datalist, pred_dir)``)
would offer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from nnunet_dataset import case_id

CLASSES = ("anterior", "posterior")


def bundle_parser(bundle_dir: Path, config_names: Sequence[str], overrides: Mapping[str, object]) -> ConfigParser:
    """The bundle's configs merged in order (as ``monai.bundle run --config_file [...]``), with ``overrides``."""
    parser = ConfigParser()
    parser.read_config([str(bundle_dir / "configs" / name) for name in config_names])
    parser.update({"bundle_root": str(bundle_dir), "progress_bar": False, **overrides})
    return parser


def find_prediction(pred_dir: Path, name: str) -> Path | None:
    """``<name>.nii.gz`` (nnU-Net) or ``<name>_seg.nii.gz`` anywhere below ``pred_dir`` (our bundle)."""
    direct = pred_dir / f"{name}.nii.gz"
    if direct.is_file():
        return direct
    return next(iter(sorted(pred_dir.rglob(f"{name}_seg.nii.gz"))), None)


def score_predictions(bundle_dir: Path, cases: Sequence[dict], pred_dir: Path) -> dict[str, list[float]]:
    """Per-case Dice (anterior, posterior) of the label files in ``pred_dir`` against our labels.

    Args:
        bundle_dir: the bundle whose validation preprocessing reads the labels and predictions.
        cases: datalist entries (``image``, ``label``).
        pred_dir: folder of predictions named after the case (``<case>.nii.gz`` or ``<case>_seg.nii.gz``).

    Returns:
        ``{case_id: [anterior, posterior]}``; missing predictions score ``[0.0, 0.0]``.
    """
    preprocessing = bundle_parser(bundle_dir, ["train.json", "evaluate.json"], {}).get_parsed_content(
        "validate#preprocessing"
    )
    num_classes = len(CLASSES) + 1
    metric = DiceMetric(include_background=False, reduction="none")
    scores = {}
    for case in cases:
        name = case_id(case["image"])
        prediction = find_prediction(pred_dir, name)
        if prediction is None:
            scores[name] = [0.0] * len(CLASSES)
            continue
        label = preprocessing({"image": case["image"], "label": case["label"]})["label"]
        predicted = preprocessing({"image": case["image"], "label": str(prediction)})["label"]
        dice = metric(one_hot(predicted[None], num_classes), one_hot(label[None], num_classes))
        scores[name] = [float(value) for value in dice[0]]
    return scores


def evaluate_bundle(bundle_dir: Path, ckpt: Path, cases: Sequence[dict], output_dir: Path) -> dict[str, list[float]]:
    """Run the bundle's ``evaluate.json`` on ``cases`` and return its per-case Dice (anterior, posterior).

    Args:
        bundle_dir: the bundle.
        ckpt: its weights.
        cases: datalist entries (``image``, ``label``) to evaluate, in this order.
        output_dir: where ``MetricsSaver`` writes its CSV files.
    """
    parser = bundle_parser(
        bundle_dir,
        ["train.json", "evaluate.json"],
        {"ckpt_path": str(ckpt), "output_dir": str(output_dir), "val_datalist": [dict(case) for case in cases]},
    )
    parser.get_parsed_content("initialize")
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    details = evaluator.state.metric_details["dice"]
    return {case_id(case["image"]): [float(v) for v in row] for case, row in zip(cases, details)}


def infer_bundle(bundle_dir: Path, ckpt: Path, cases: Sequence[dict], work_dir: Path) -> dict[str, float]:
    """Run the bundle's ``inference.json`` on the images of ``cases`` (files in, label files out) and time it.

    The seconds of a case run from the end of the previous one (or the start of the epoch, after the weights are
    loaded) to the end of its own: loading, preprocessing, sliding-window inference, inversion and writing.

    Args:
        bundle_dir: the bundle.
        ckpt: its weights.
        cases: datalist entries; their images are linked into ``work_dir/images``.
        work_dir: holds ``images/`` (links) and ``predictions/``.

    Returns:
        ``{case_id: seconds}``.
    """
    images = work_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.iterdir():
        stale.unlink()
    for case in cases:
        os.symlink(os.path.abspath(case["image"]), images / Path(case["image"]).name)
    parser = bundle_parser(
        bundle_dir,
        ["inference.json"],
        {"ckpt_path": str(ckpt), "dataset_dir": str(images), "output_dir": str(work_dir / "predictions")},
    )
    parser.get_parsed_content("initialize")
    evaluator = parser.get_parsed_content("evaluator")
    marks: list[float] = []
    evaluator.add_event_handler(Events.EPOCH_STARTED, lambda _: marks.append(time.perf_counter()))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: marks.append(time.perf_counter()))
    evaluator.run()
    names = [case_id(item["image"]) for item in parser.get_parsed_content("datalist")]
    return {name: after - before for name, before, after in zip(names, marks, marks[1:])}


def mean_scores(scores: Mapping[str, Sequence[float]]) -> list[float]:
    """Mean over cases per class, then the mean of the classes appended."""
    per_class = torch.tensor([list(values) for values in scores.values()], dtype=torch.float64).mean(dim=0)
    values = [float(v) for v in per_class]
    return [*values, sum(values) / len(values)]


def markdown_table(rows: Sequence[Mapping[str, object]]) -> str:
    """The comparison table: method, configuration, training budget, Dice per class and mean, seconds per volume."""
    lines = [
        "| method | configuration | training budget | anterior Dice | posterior Dice | mean | inference s / volume |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        dice = row["dice"]
        lines.append(
            f"| {row['method']} | {row['configuration']} | {row['budget']} | {dice[0]:.4f} | {dice[1]:.4f} | "
            f"{dice[2]:.4f} | {row['seconds']:.2f} |"
        )
    return "\n".join(lines)
