"""Soak test of the inference path: many consecutive volume inferences in one process, with flat memory.

Run: ``.venv/bin/python benchmarks/soak_inference.py [--count 200] [--warmup 20] [--quick] [--threads 1]``.
Prints a markdown table and writes it to ``benchmarks/results/soak_inference.md``.

The pipeline is the hippocampus bundle's own, built from ``configs/inference.json`` with ``monai.bundle.ConfigParser``:
``preprocessing`` (LoadImaged with the DICOM-capable reader, orientation, spacing, normalisation), the 2.5D
``SlidingWindowSliceInferer`` (k = 2, Gaussian blending) on the base-32 2D UNet, and ``postprocessing`` (softmax,
``Invertd`` back to the input grid, argmax) without the file writer, so the disk does not enter the numbers.
Weights come from ``models/model.pt`` (``weights_only=True``) or are random when that file is absent. The twelve
committed sample volumes (different shapes) are cycled.

The resident set size (``VmRSS`` from ``/proc/self/status``) is read after every inference. Reported: RSS after the
warm-up (the first ``--warmup`` inferences, when allocator pools, caches and lazy imports settle) as the baseline,
its ratio to the RSS at later checkpoints, the growth of the last inference over the baseline in percent, and the
least-squares slope of RSS over the post-warm-up inferences (MiB per 100 inferences): a leak shows as a steady
slope, allocator noise as a flat line with jitter.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUNDLE = REPO / "bundles" / "hippocampus_unet25d_segmentation"
SAMPLES = BUNDLE / "sample_data" / "imagesTr"
RESULTS = REPO / "benchmarks" / "results" / "soak_inference.md"


def rss_mib() -> float:
    """Resident set size of this process in MiB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def release_free_memory() -> None:
    """Collect garbage and hand the allocator's free pages back to the OS (glibc ``malloc_trim``)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def build_pipeline() -> tuple[torch.nn.Module, object, object, object, str]:
    """Network, preprocessing, inferer and postprocessing (writer removed) from the bundle's ``inference.json``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    post = parser["postprocessing"]["transforms"]
    parser["postprocessing"]["transforms"] = [t for t in post if "Save" not in str(t.get("_target_", ""))]
    network = parser.get_parsed_content("network_def", instantiate=True)
    weights = BUNDLE / "models" / "model.pt"
    if weights.is_file():
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        source = "models/model.pt"
    else:
        source = "random (models/model.pt absent)"
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")
    return network.eval(), preprocessing, inferer, postprocessing, source


def soak(components: tuple, count: int, trim: bool) -> tuple[list[float], list[float], list[int]]:
    """Run ``count`` inferences; returns RSS after each (MiB), seconds per inference, foreground voxel counts.

    Args:
        components: network, preprocessing, inferer, postprocessing from :func:`build_pipeline`.
        count: number of inferences.
        trim: release free allocator memory before each RSS reading, so RSS follows live memory.
    """
    from monai.data import decollate_batch

    network, preprocessing, inferer, postprocessing = components
    volumes = sorted(SAMPLES.glob("*.nii.gz"))
    rss, seconds, foreground = [], [], []
    with torch.no_grad():
        for index in range(count):
            start = time.perf_counter()
            data = preprocessing({"image": str(volumes[index % len(volumes)])})
            batch = data["image"].unsqueeze(0)
            data["pred"] = decollate_batch(inferer(batch, network))[0]
            labels = postprocessing(data)["pred"]
            foreground.append(int((labels > 0).sum()))
            del data, batch, labels
            seconds.append(time.perf_counter() - start)
            if trim:
                release_free_memory()
            rss.append(rss_mib())
    return rss, seconds, foreground


def series_summary(rss: list[float], warmup: int) -> dict[str, float]:
    """Baseline (RSS after the warm-up), growth of the last reading and of the largest one, slope, window medians."""
    baseline = rss[warmup - 1]
    after = np.asarray(rss[warmup:])
    window = max(1, min(20, after.size // 2))
    return {
        "baseline": baseline,
        "growth": 100.0 * (rss[-1] - baseline) / baseline,
        "peak_growth": 100.0 * (after.max() - baseline) / baseline,
        "window_growth": 100.0 * (np.median(after[-window:]) - np.median(after[:window])) / np.median(after[:window]),
        "slope": float(np.polyfit(np.arange(after.size), after, 1)[0]) * 100 if after.size > 1 else 0.0,
    }


def report(series: dict[str, tuple[list[float], list[float], list[int]]], warmup: int, source: str) -> str:
    """The markdown report: both series side by side, RSS relative to each series' post-warm-up baseline."""
    names = list(series)
    count = len(series[names[0]][0])
    summaries = {name: series_summary(values[0], warmup) for name, values in series.items()}
    checkpoints = sorted({1, warmup, *[n for n in (50, 100, 150, 200, 300, 500) if n < count], count})
    header = " | ".join(f"{name}: RSS MiB | {name}: / after warm-up" for name in names)
    lines = [
        f"Soak: {count} consecutive inferences per series of the hippocampus bundle pipeline in one process "
        f"(LoadImaged → Orientation/Spacing/Normalize → 2.5D SlidingWindowSliceInferer, UNet base 32 → softmax/"
        f"Invertd/argmax), the 12 sample volumes cycled, weights {source}, {torch.get_num_threads()} thread(s). "
        'Series "as is": RSS as the process sees it; "trimmed": `gc.collect()` + glibc `malloc_trim(0)` before '
        "each reading, so RSS follows live memory (the difference is freed memory the allocator keeps).",
        "",
        f"| inference # | {header} |",
        "|---:|" + "---:|---:|" * len(names),
    ]
    for n in checkpoints:
        cells = " | ".join(
            f"{series[name][0][n - 1]:.1f} | {series[name][0][n - 1] / summaries[name]['baseline']:.4f}"
            for name in names
        )
        lines.append(f"| {n} | {cells} |")
    rows = [
        ("RSS after warm-up (MiB)", "baseline", "{:.1f}"),
        ("RSS growth, last vs after warm-up", "growth", "{:+.2f}%"),
        ("largest RSS after warm-up vs after warm-up", "peak_growth", "{:+.2f}%"),
        ("median RSS, last 20 vs first 20 after warm-up (fewer if short)", "window_growth", "{:+.2f}%"),
        ("RSS slope after warm-up (MiB per 100 inferences)", "slope", "{:+.2f}"),
    ]
    lines += ["", f"| measure (warm-up: first {warmup} inferences) | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt.format(summaries[name][key]) for name in names) + " |")
    lines.append(
        "| median seconds per inference (noisy, shared CPU) | "
        + " | ".join(f"{np.median(series[name][1]):.3f}" for name in names)
        + " |"
    )
    lines.append(
        "| same prediction for the same volume every cycle | "
        + " | ".join(_stable(series[name][2]) for name in names)
        + " |"
    )
    return "\n".join(lines) + "\n"


def _stable(foreground: list[int]) -> str:
    period = len(list(SAMPLES.glob("*.nii.gz")))
    cycles = [foreground[offset::period] for offset in range(min(period, len(foreground)))]
    return "yes" if all(len(set(values)) == 1 for values in cycles) else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="number of consecutive inferences")
    parser.add_argument("--warmup", type=int, default=20, help="inferences before the RSS baseline is taken")
    parser.add_argument("--quick", action="store_true", help="40 inferences, warm-up 10")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    if args.quick:
        args.count, args.warmup = 40, 10
    if args.warmup < 1 or args.warmup >= args.count:
        parser.error("--warmup must be at least 1 and less than --count")
    torch.set_num_threads(args.threads)
    network, preprocessing, inferer, postprocessing, source = build_pipeline()
    components = (network, preprocessing, inferer, postprocessing)
    series = {}
    for name, trim in (("as is", False), ("trimmed", True)):
        series[name] = soak(components, args.count, trim)
    table = report(series, args.warmup, source)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)


if __name__ == "__main__":
    main()
