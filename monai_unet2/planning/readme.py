"""The README of a planned bundle: the dataset's fingerprint, every decision with its reason, and the commands."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from monai_unet2.planning.overrides import OVERRIDABLE

if TYPE_CHECKING:
    from .planner import Plan

__all__ = ["GENERATED_MARK", "plan_readme"]

#: first line of a README written by the planner (a README without it is hand-written and kept)
GENERATED_MARK = "<!-- written by `python -m monai_unet2 plan`; planning again rewrites it -->"
DECISIONS = (*(key for key in OVERRIDABLE if key != "dataset_dir"), "folds")


def _value(value: Any) -> str:
    return f"`{json.dumps(value)}`".replace("|", "\\|")


def _fingerprint(plan: Plan) -> list[str]:
    fingerprint = plan.plans["fingerprint"]
    spacing, shape = fingerprint["spacing"], fingerprint["shape"]
    lines = [
        "| | |",
        "|---|---|",
        f"| dataset | {fingerprint['dataset']} ({fingerprint['layout']} layout), `{plan.plans['dataset_dir']}` |",
        f"| cases | {fingerprint['cases']} training ({fingerprint['cases_read']} read for voxel statistics), {fingerprint['test_cases']} test |",
        f"| stored orientation | {fingerprint['orientation']} |",
        f"| spacing (mm, R A S) | median {_value(spacing['median'])}, min {_value(spacing['min'])}, max {_value(spacing['max'])} |",
        f"| shape (voxels, R A S) | median {_value(shape['median'])}, min {_value(shape['min'])}, max {_value(shape['max'])} |",
        f"| anisotropy (coarsest / finest median spacing) | {fingerprint['anisotropy']:.3g} |",
        f"| non-zero region (median share of a volume) | {fingerprint['nonzero_crop_fraction']:.0%} |",
    ]
    for index, channel in fingerprint["channels"].items():
        stats = channel["foreground_intensity"]
        lines.append(
            f"| channel {index}: {channel['name']} | {channel['modality']} (from the {channel['modality_from']}); "
            f"foreground mean {stats['mean']:.4g}, std {stats['std']:.4g}, 0.5-99.5% [{stats['percentile_00_5']:.4g}, "
            f"{stats['percentile_99_5']:.4g}] |"
        )
    for value, label in fingerprint["labels"].items():
        lines.append(
            f"| label {value}: {label['name']} | {label['voxel_fraction']:.3%} of the voxels, in "
            f"{label['cases_present']} of {fingerprint['cases_read']} cases read |"
        )
    return lines


def plan_readme(plan: Plan, name: str) -> str:
    """The Markdown README of the planned bundle ``name``.

    Args:
        plan: the plan.
        name: the bundle (folder) name.
    """
    plans = plan.plans
    reasons = plans["reasons"]
    labels = ", ".join(f"{value} {label}" for value, label in plan.labels.items())
    channels = ", ".join(f"{index} {channel}" for index, channel in plan.channel_names.items())
    lines = [
        GENERATED_MARK,
        f"# {name}",
        "",
        f"Segmentation of {plan.dataset.name}: labels {labels}; input channels {channels}. Planned by "
        f"`python -m monai_unet2 plan` in {plan.seconds:.0f} s; research use only.",
        "",
        "## Dataset fingerprint",
        "",
        *_fingerprint(plan),
        "",
        "## Decisions",
        "",
        "Each is in `configs/plans.json` (with its reason under `reasons`); change one with",
        "`--override key=value` when planning, or with `--key value` on a bundle command line.",
        "",
        "| decision | value | reason |",
        "|---|---|---|",
    ]
    for key in DECISIONS:
        lines.append(f"| `{key}` | {_value(plans[key])} | {reasons.get(key, '').replace('|', '/')} |")
    measured = plans["measured"]
    lines += [
        "",
        f"Budget: {plans['time_budget_minutes']:g} min per fold, measured on {measured['device']} with "
        f"{measured['threads']} thread(s): {measured['train_step_seconds']:.3g} s per bare training step, "
        f"{measured['window_batch_seconds']:.3g} s per {measured['window_batch']} inference windows.",
    ]
    if plans.get("overrides"):
        lines += ["", f"Set by hand (`--override`): {_value(plans['overrides'])}."]
    lines += [
        "",
        "## Use",
        "",
        "From the folder that holds this bundle (`B` below); every command also runs from elsewhere with absolute",
        "paths. Training is tracked in MLflow (`eval/mlflow.db` in the bundle unless `MLFLOW_TRACKING_URI` is set),",
        f"experiment and registered model `{name}`.",
        "",
        "```bash",
        f"B={name}",
        "# train fold 0 (of the folds in configs/splits.json); --fold all trains on every case without validation",
        "python -m monai.bundle run --config_file $B/configs/train.json --bundle_root $B --fold 0",
        "#   --max_epochs N  shorter or longer than planned;  --resume True  continue after a kill",
        *(
            ["# each extra view of plans.json (multi-view 2.5D) into models/<view>/; inference fuses them all"]
            + [
                f"python -m monai.bundle run --config_file $B/configs/train.json --bundle_root $B --view {view}"
                for view in plans["views"]
            ]
            if plans.get("views")
            else []
        ),
        "# segment a folder (or the dataset's imagesTs) with every trained fold; labels as <case>_seg.nii.gz",
        "python -m monai.bundle run --config_file $B/configs/inference.json --bundle_root $B \\",
        "    --dataset_dir /path/to/imagesTs --output_dir /path/to/predictions",
        '#   --flip_tta True  flip test-time augmentation;  --folds "[0]"  one fold only',
        "# per-case Dice and HD95 by label name, summary.json: a fold's validation cases, or a labelled test set",
        "python -m monai.bundle run --config_file \"['$B/configs/train.json','$B/configs/evaluate.json']\" \\",
        "    --bundle_root $B --split validation --fold 0 --output_dir $B/eval/fold_0",
        "python -m monai.bundle run --config_file \"['$B/configs/train.json','$B/configs/evaluate.json']\" \\",
        "    --bundle_root $B --dataset_dir /path/to/labelled_test_dataset --split all --output_dir $B/eval/test",
        "# the same on N GPUs (or N CPU processes), each rank a share of the cases: merge multi_gpu_inference.json",
        "torchrun --standalone --nproc_per_node=N -m monai.bundle run --bundle_root $B \\",
        "    --config_file \"['$B/configs/inference.json','$B/configs/multi_gpu_inference.json']\" \\",
        "    --dataset_dir /path/to/imagesTs --output_dir /path/to/predictions",
        "#   evaluation: train.json, evaluate.json and multi_gpu_evaluate.json merged; one report, written by rank 0",
        "```",
        "",
        "Trained folds are kept in `models/fold_<k>/model.pt`; inference and evaluation average every fold found",
        "(`models/model.pt`, the latest best checkpoint of any fold, is what MONAI Label and single-network tools load).",
        "",
    ]
    return "\n".join(lines)
