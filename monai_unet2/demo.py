"""The hippocampus demo: README command 1.

Runs the hippocampus bundle the way a user would, through MONAI's bundle runner:

1. evaluate the shipped weights on the committed sample (12 MR volumes) and print per-case Dice per class;
2. segment the sample volumes and write one label volume per input, in the input's space;
3. train briefly on the sample, tracked in MLflow (embedded SQLite store), and say where to look at the run.

Usage: ``python -m monai_unet2.demo [--output-dir DIR] [--epochs N]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np

BUNDLE_NAME = "hippocampus_unet25d_segmentation"
REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundles" / BUNDLE_NAME

__all__ = ["foreground_names", "main", "print_dice_table"]


def _run_bundle(*configs: str, **overrides: object) -> None:
    """Run the bundle's configs, merged in order, with MONAI's bundle runner (as ``python -m monai.bundle run`` does).

    Args:
        configs: file names in the bundle's ``configs/`` folder, e.g. ``"train.json", "evaluate.json"``.
        overrides: config ids to override, as on the command line.
    """
    from monai.bundle import run

    run(
        config_file=[str(BUNDLE_ROOT / "configs" / config) for config in configs],
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        logging_file=str(BUNDLE_ROOT / "configs" / "logging.conf"),
        bundle_root=str(BUNDLE_ROOT),
        **overrides,
    )


def foreground_names(bundle_root: Path = BUNDLE_ROOT) -> tuple[str, ...]:
    """The bundle's foreground label names in label order, from its ``metadata.json``."""
    from monai_unet2.bundle_config import label_names

    return tuple(name for value, name in label_names(bundle_root).items() if value != "0")


def print_dice_table(dice_csv: Path, class_names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Print the per-case Dice table written by the bundle's ``evaluate.json`` and return the per-class means.

    Args:
        dice_csv: ``dice_raw.csv`` of the evaluation report (one row per case, one column per label name).
        class_names: names of the foreground classes in column order; default the bundle's labels.
    """
    class_names = class_names or foreground_names()
    with open(dice_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(class_names)
    header = f"{'case':<22}" + "".join(f"{name:>12}" for name in class_names) + f"{'mean':>10}"
    print(header)
    print("-" * len(header))
    values = np.array([[float(row[column]) for column in columns] for row in rows])
    for row, case_values in zip(rows, values):
        case = Path(row["filename"]).name.replace(".nii.gz", "")
        print(f"{case:<22}" + "".join(f"{value:>12.3f}" for value in case_values) + f"{case_values.mean():>10.3f}")
    means = values.mean(axis=0)
    print("-" * len(header))
    print(f"{'mean':<22}" + "".join(f"{value:>12.3f}" for value in means) + f"{means.mean():>10.3f}")
    return dict(zip(class_names, means.tolist()))


def main(argv: list[str] | None = None) -> None:
    """Run the demo; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output-dir", default="monai_unet2_demo", help="where results go (default: ./monai_unet2_demo)"
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the short training run (default 2)")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    print(f"\n== 1/3  Shipped model on the {BUNDLE_NAME} sample (held-out validation cases) ==")
    _run_bundle("train.json", "evaluate.json", output_dir=str(output_dir / "evaluation"))
    means = print_dice_table(output_dir / "evaluation" / "dice_raw.csv")

    print("\n== 2/3  Segmenting the sample volumes (labels written in each input's space) ==")
    _run_bundle("inference.json", output_dir=str(output_dir / "segmentations"))
    written = sorted((output_dir / "segmentations").glob("*_seg.nii.gz"))
    first = written[0]
    source = BUNDLE_ROOT / "sample_data" / "imagesTr" / first.name.replace("_seg.nii.gz", ".nii.gz")
    same_grid = (
        np.allclose(nib.load(first).affine, nib.load(source).affine) and nib.load(first).shape == nib.load(source).shape
    )
    print(f"wrote {len(written)} label volumes to {output_dir / 'segmentations'} (same grid as input: {same_grid})")

    print(f"\n== 3/3  Training {args.epochs} epoch(s) on the sample, tracked in MLflow ==")
    train_dir = output_dir / "training"
    _run_bundle(
        "train.json",
        ckpt_dir=str(train_dir / "models"),
        output_dir=str(train_dir / "eval"),
        max_epochs=args.epochs,
        epoch_length=3,  # one pass over the 9 training volumes of the sample, 4 per batch
    )
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{train_dir / 'eval' / 'mlflow.db'}"
    print(f"\nDone in {time.time() - started:.0f} s.")
    print("Shipped model, mean Dice on the sample: " + ", ".join(f"{name} {dice:.3f}" for name, dice in means.items()))
    print(f"Checkpoint of the short run: {train_dir / 'models' / 'fold_0' / 'model.pt'}")
    print("Look at the tracked run (metrics, config, prediction overlays) with:")
    print(f"    .venv/bin/mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000")


if __name__ == "__main__":
    main()
