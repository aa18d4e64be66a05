"""The DRIVE bundle's binarisation threshold: mean F1 inside the FOV per threshold, on training and validation images.

Run: ``.venv/bin/python benchmarks/drive_threshold.py [--drive ../shared/data/drive/training] [--threads 2]``.
Prints a markdown table and writes it to ``benchmarks/results/drive_threshold.md``.

The shipped evaluation (``train.json`` + ``evaluate.json``: flip TTA, overlap 0.5, shipped weights) gives each
image's vessel probabilities once; each threshold then binarises them and scores the mean per-image F1 inside the
field of view (the bundle's ``f1_fov``). A threshold is chosen on the 16 training images only, as the literature
does when it tunes one; the 4 validation images show what the choice does on images the network never saw. The
network fitted the training images, so their probabilities are more confident than on new images: the table shows
both, and the bundle keeps the sigmoid's midpoint unless the validation column agrees with the training choice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import conditions, write_result  # noqa: E402

BUNDLE = REPO / "bundles" / "drive_vessel_u2net_segmentation"
THRESHOLDS = [round(value, 2) for value in np.arange(0.30, 0.71, 0.05)]


def probabilities(drive: Path, split: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(probability, label, fov)`` arrays of each image of ``split``, inferred as the shipped evaluation does."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")])
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(drive), "device": "$torch.device('cpu')"})
    network = parser.get_parsed_content("network")
    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state))
    network.eval()
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    datalist = parser.get_parsed_content("train_datalist" if split == "training" else "val_datalist")
    cases = []
    for item in datalist:
        data = preprocessing(dict(item))
        with torch.no_grad():
            probability = inferer(data["image"][None], network)[0, 0].numpy()
        label = np.asarray(data["label"][0]) > 0
        fov = np.asarray(data["mask"][0]) > 0
        cases.append((probability, label, fov))
        print(f"{split}: {Path(item['image']).name} inferred", flush=True)
    return cases


def mean_f1(cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]], threshold: float) -> float:
    """Mean over images of F1 inside the FOV at ``threshold``."""
    scores = []
    for probability, label, fov in cases:
        predicted, truth = (probability > threshold) & fov, label & fov
        scores.append(2.0 * np.logical_and(predicted, truth).sum() / (predicted.sum() + truth.sum()))
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drive", type=Path, default=REPO.parent / "shared" / "data" / "drive" / "training")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = {split: probabilities(args.drive, split) for split in ("training", "validation")}
    scores = {split: [mean_f1(cases, threshold) for threshold in THRESHOLDS] for split, cases in splits.items()}
    best = int(np.argmax(scores["training"]))
    rows = [
        "| threshold | F1 in the FOV, 16 training images | F1 in the FOV, 4 validation images |",
        "|---:|---:|---:|",
    ]
    for index, threshold in enumerate(THRESHOLDS):
        mark = " (best on training)" if index == best else ""
        rows.append(f"| {threshold:.2f}{mark} | {scores['training'][index]:.4f} | {scores['validation'][index]:.4f} |")
    body = "\n".join(rows) + f"\n\nShipped weights, flip TTA, overlap 0.5; {conditions(args.threads)}\n"
    print(body)
    print(write_result("drive_threshold", "DRIVE: F1 in the FOV per binarisation threshold", body))


if __name__ == "__main__":
    main()
