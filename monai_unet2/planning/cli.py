"""``python -m monai_unet2 plan``: plan a bundle for a dataset folder, with no hand edits needed afterwards."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from monai_unet2.data import DatalistError

from .bundle_writer import BundleExistsError, write_bundle
from .overrides import OVERRIDABLE, parse_overrides
from .planner import plan_dataset

__all__ = ["main", "parser"]


def _json_object(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r} ({error})") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object like \'{{"1": "liver"}}\', got {text!r}')
    return {str(key): str(item) for key, item in value.items()}


def parser() -> argparse.ArgumentParser:
    """The command-line interface of ``plan``."""
    cli = argparse.ArgumentParser(
        prog="python -m monai_unet2 plan",
        description="Fingerprint a segmentation dataset (nnU-Net v2 or Medical Segmentation Decathlon layout) and write "
        "a complete MONAI bundle for it: plans.json with every decision and its reason, metadata.json, splits.json, "
        "the train / inference / evaluate configs and a README.",
    )
    cli.add_argument("--dataset_dir", required=True, help="the dataset folder (imagesTr, labelsTr, dataset.json)")
    cli.add_argument("--bundle_dir", required=True, help="the bundle folder to write; its name names the model")
    cli.add_argument("--time_budget_minutes", type=float, default=60.0, help="training time per fold (default 60)")
    cli.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    cli.add_argument(
        "--split_method", choices=("interleaved", "random"), default="interleaved", help="how to make folds"
    )
    cli.add_argument("--split_seed", type=int, default=12345, help="seed of --split_method random (nnU-Net: 12345)")
    cli.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"set a decision by hand, JSON value; repeatable. Keys: {', '.join(OVERRIDABLE)} (dotted: network.features)",
    )
    cli.add_argument("--labels", type=_json_object, help='label names when dataset.json has none: \'{"1": "liver"}\'')
    cli.add_argument("--channel_names", type=_json_object, help='channel names (= modality): \'{"0": "CT"}\'')
    cli.add_argument("--max_cases", type=int, default=40, help="cases read for voxel statistics (default 40)")
    cli.add_argument("--step_seconds", type=float, help="plan with this training-step time instead of measuring it")
    cli.add_argument(
        "--views", action="store_true", help="plan coronal/sagittal models too, fused at inference (isotropic data)"
    )
    cli.add_argument("--overwrite", action="store_true", help="replace the configs of an already planned bundle")
    cli.add_argument("--allow_outside_root", action="store_true", help="accept files that resolve outside the dataset")
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``plan``; returns the exit status (2 with a one-line message for a dataset or option problem).

    Args:
        argv: the arguments after ``plan``.
    """
    arguments = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        plan = plan_dataset(
            arguments.dataset_dir,
            time_budget_minutes=arguments.time_budget_minutes,
            num_folds=arguments.folds,
            split_method=arguments.split_method,
            split_seed=arguments.split_seed,
            overrides=parse_overrides(arguments.override),
            labels=arguments.labels,
            channel_names=arguments.channel_names,
            max_cases=arguments.max_cases,
            step_seconds=arguments.step_seconds,
            allow_outside_root=arguments.allow_outside_root,
            views=arguments.views,
        )
        written = write_bundle(plan, arguments.bundle_dir, overwrite=arguments.overwrite)
    except (DatalistError, BundleExistsError, ValueError) as error:
        print(f"plan: {error}", file=sys.stderr)
        return 2
    plans = plan.plans
    print(
        f"planned {plan.dataset.name}: {len(plan.dataset.training)} cases in {len(plan.splits)} folds, {plan.seconds:.1f} s"
    )
    for key in ("spacing", "slice_axis", "context_slices", "roi_size", "normalization", "max_epochs", "epoch_length"):
        print(f"  {key}: {json.dumps(plans[key])}")
    print(f"wrote {arguments.bundle_dir}: " + ", ".join(str(path.name) for path in written.values()))
    print(
        f"train fold 0: python -m monai.bundle run --config_file {arguments.bundle_dir}/configs/train.json "
        f"--bundle_root {arguments.bundle_dir} --fold 0"
    )
    return 0
