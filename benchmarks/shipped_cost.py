"""What the accuracy levers of the shipped bundles cost per case: whole ``inference.json`` runs, with and without them.

Run: ``.venv/bin/python benchmarks/shipped_cost.py [--hippocampus-cases 40] [--drive-cases 4] [--repeats 1]``.
Prints a markdown table and writes it to ``benchmarks/results/shipped_cost.md``.

Each bundle's validation cases (hippocampus: ``msd_datalist(..., "validation", 5)`` of
``../shared/data/msd_hippocampus``; DRIVE: ``paired_datalist(..., split="validation")`` of
``../shared/data/drive/training``) are copied into one input folder, and ``python -m monai.bundle run`` of the
bundle's ``inference.json`` writes their labels twice per round: as shipped, and with the levers turned off by
command-line overrides (hippocampus ``--views "{}"``: the axial network alone; DRIVE ``--flip_tta False
--inferer#overlap 0.25``: one pass, the windows of 0.2.0). Seconds per case are a run's wall time (process start,
model loading, reading and writing included) divided by its cases, median over rounds; the two variants alternate
within each round so that a slow spell of the shared machine hits both. Hippocampus runs with one thread (as the
README's figures), DRIVE with two.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import conditions, write_result  # noqa: E402
from monai_unet2.data import msd_datalist, paired_datalist  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
BUNDLES = {
    "hippocampus": {
        "bundle": REPO / "bundles" / "hippocampus_unet25d_segmentation",
        "ships": "axial + coronal + sagittal UNets fused",
        "without": ["--views", "{}"],
        "threads": 1,
    },
    "DRIVE": {
        "bundle": REPO / "bundles" / "drive_vessel_u2net_segmentation",
        "ships": "flip TTA (4 passes), overlap 0.5",
        "without": ["--flip_tta", "False", "--inferer#overlap", "0.25"],
        "threads": 2,
    },
}


def validation_images(name: str, cases: int) -> list[Path]:
    """The first ``cases`` validation images of a bundle's development data."""
    if name == "hippocampus":
        datalist = msd_datalist(SHARED / "msd_hippocampus", "validation", 5)
    else:
        training = SHARED / "drive" / "training"
        datalist = paired_datalist(training / "images", training / "1st_manual", training / "mask", split="validation")
    return [Path(item["image"]) for item in datalist[:cases]]


def run_inference(bundle: Path, inputs: Path, output: Path, threads: int, overrides: list[str]) -> float:
    """Wall seconds of one ``monai.bundle run`` of ``inference.json`` over ``inputs`` (a fresh ``output``)."""
    shutil.rmtree(output, ignore_errors=True)
    argv = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json")]
    argv += ["--bundle_root", str(bundle), "--meta_file", str(bundle / "configs" / "metadata.json")]
    argv += ["--dataset_dir", str(inputs), "--output_dir", str(output), "--progress_bar", "False", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{bundle.name}: inference failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return seconds


def measure(name: str, cases: int, repeats: int, work: Path) -> dict:
    """Median seconds per case of ``name``'s shipped inference and of the same without its levers."""
    spec = BUNDLES[name]
    images = validation_images(name, cases)
    inputs = work / name / "inputs"
    inputs.mkdir(parents=True)
    for image in images:
        shutil.copy(image, inputs / image.name)
    variants = {"shipped": [], "without": []}
    for round_index in range(repeats):
        order = ["shipped", "without"] if round_index % 2 == 0 else ["without", "shipped"]
        for variant in order:
            overrides = [] if variant == "shipped" else spec["without"]
            output = work / name / variant
            seconds = run_inference(spec["bundle"], inputs, output, spec["threads"], overrides)
            variants[variant].append(seconds / len(images))
    return {variant: statistics.median(values) for variant, values in variants.items()} | {"cases": len(images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hippocampus-cases", type=int, default=40)
    parser.add_argument("--drive-cases", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of both variants per bundle")
    args = parser.parse_args()
    rows = [
        "| bundle | what ships | per case | without the accuracy levers | per case | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="shipped_cost_") as tmp:
        for name, cases in (("hippocampus", args.hippocampus_cases), ("DRIVE", args.drive_cases)):
            spec = BUNDLES[name]
            seconds = measure(name, cases, args.repeats, Path(tmp))
            rows.append(
                f"| {name} ({seconds['cases']} validation cases, {spec['threads']} thread(s)) | {spec['ships']} "
                f"| {seconds['shipped']:.1f} s | `{' '.join(spec['without'])}` | {seconds['without']:.1f} s "
                f"| {seconds['shipped'] / seconds['without']:.2f}x |"
            )
            print(rows[-1], flush=True)
    body = "\n".join(rows) + f"\n\n{args.repeats} round(s); {conditions()}\n"
    print(body)
    print(write_result("shipped_cost", "Per-case cost of the shipped bundles' accuracy levers", body))


if __name__ == "__main__":
    main()
