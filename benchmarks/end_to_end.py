"""End to end on a CPU: the hippocampus bundle's inference on a 512×512 CT series, window size and precision.

Run: ``.venv/bin/python benchmarks/end_to_end.py [--quick] [--threads 2] [--slices 8]``. Prints two markdown
tables and writes them to ``benchmarks/results/end_to_end.md``.

Everything comes from the bundle's own configs (``monai.bundle.ConfigParser``): the network and its shipped weights,
the inference preprocessing (DICOM series, RAS, 1 mm spacing, normalisation) applied to
``tests/data/dicom/totalseg_ct20`` (20 slices 512×512, 0.98 mm, 2 mm apart: 500×500×39 at 1 mm), the validation
preprocessing and split (the 40 validation cases of ``/work/shared/data/msd_hippocampus``, ``msd_datalist(dir,
"validation", 5)``), and the inferer, whose arguments each variant overrides:

- seconds per CT slice: the inferer on a centred slab of ``--slices`` slices of the CT, medians of interleaved
  rounds; "network only" is the bare network over the same windows (recorded), i.e. the inferer's lower bound.
- Dice on the validation split, per variant: mean over cases and both foreground classes (the bundle's
  ``val_mean_dice``), and how far each variant is from the bundle's fp32 inference today.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import conditions, interleaved, write_result  # noqa: E402
from monai_unet2.inferers import SlidingWindowSliceInferer  # noqa: E402

BUNDLE = REPO / "bundles" / "hippocampus_unet25d_segmentation"
CT_SERIES = REPO / "tests" / "data" / "dicom" / "totalseg_ct20" / "ct"
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "msd_hippocampus"
FAST = {"amp": True, "channels_last": True}
TODAY = "48×64 windows, overlap 0.5, fp32 (bundle today)"
WHOLE = {"roi_size": None, "sw_batch_size": 4, "size_divisible_by": 16}
VARIANTS: dict[str, dict] = {
    TODAY: {},
    "48×64 windows, overlap 0.5, bf16 + channels_last": FAST,
    "whole slice as is, fp32": {"roi_size": None, "sw_batch_size": 4},
    "whole slice padded to ×16, bf16 + channels_last": {**WHOLE, **FAST},
    "whole slice padded to ×16, at least 48×64, fp32": {**WHOLE, "min_roi_size": "@roi_size"},
    "whole slice padded to ×16, at least 48×64, bf16 + channels_last": {**WHOLE, "min_roi_size": "@roi_size", **FAST},
}


def bundle_config(name: str, **overrides) -> ConfigParser:
    """The bundle's ``configs/<name>.json`` with ``bundle_root`` and ``overrides`` set."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / f"{name}.json"))
    parser["bundle_root"] = str(BUNDLE)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def bundle_network(parser: ConfigParser) -> torch.nn.Module:
    """The bundle's network with its shipped weights, in eval mode, on the CPU."""
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    return network.eval()


def make_inferer(parser: ConfigParser, inferer_id: str, overrides: dict) -> SlidingWindowSliceInferer:
    """The bundle's inferer (a :class:`SlidingWindowSliceInferer`) with some arguments replaced."""
    base = parser.get(f"{inferer_id}_as_shipped") or copy.deepcopy(parser.get(inferer_id))
    parser[f"{inferer_id}_as_shipped"] = base
    parser[inferer_id] = {**base, **overrides}
    inferer = parser.get_parsed_content(inferer_id, lazy=False)
    assert isinstance(inferer, SlidingWindowSliceInferer), type(inferer)
    return inferer


class Recorder(torch.nn.Module):
    """Runs the network and keeps a copy of every window batch it was given."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network, self.batches = network, []

    def forward(self, x):
        self.batches.append(x.clone())
        return self.network(x)


def ct_rows(threads: int, repeats: int, num_slices: int) -> tuple[list[str], str]:
    """Seconds per CT slice of each variant, with the bare network over the same windows."""
    parser = bundle_config("inference")
    network = bundle_network(parser)
    volume = parser.get_parsed_content("preprocessing")({"image": str(CT_SERIES)})["image"].as_tensor()[None]
    first = volume.shape[-1] // 2 - num_slices // 2
    slab = volume[..., first : first + num_slices].contiguous()
    candidates, windows = {}, {}
    with torch.no_grad():
        for name, overrides in VARIANTS.items():
            inferer = make_inferer(parser, "inferer", overrides)
            recorder = Recorder(network)
            inferer(slab, recorder)
            windows[name] = sum(b.shape[0] for b in recorder.batches)
            candidates[name] = lambda i=inferer: i(slab, network)
            amp = inferer.amp

            def bare(batches=recorder.batches, amp=amp):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(amp)):
                    for batch in batches:
                        network(batch)

            candidates[f"network only: {name}"] = bare
        timings = interleaved(candidates, repeats)
    rows = []
    for name in VARIANTS:
        per_slice = timings.wall(name) / num_slices
        rows.append(
            f"| {name} | {windows[name] // num_slices} | {per_slice:.3f} | "
            f"{timings.cpu(name) / num_slices / threads:.3f} | {timings.wall(f'network only: {name}') / num_slices:.3f} | "
            f"{timings.ratio(TODAY, name):.1f} |"
        )
        print(rows[-1], flush=True)
    shape = "×".join(str(s) for s in volume.shape[2:])
    return rows, shape


def dice_rows(limit: int | None) -> list[str]:
    """Mean Dice of each variant on the bundle's validation split, and its distance to today's fp32 inference."""
    parser = bundle_config("train", dataset_dir=str(HIPPOCAMPUS))
    network = bundle_network(parser)
    datalist = parser.get_parsed_content("val_datalist")[:limit]
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    cases = [preprocessing(item) for item in datalist]
    results, labels, seconds = {}, {}, {}
    with torch.no_grad():
        for name, overrides in VARIANTS.items():
            inferer = make_inferer(parser, "validate#inferer", overrides)
            metric = DiceMetric(include_background=False, reduction="mean_batch")
            labels[name], seconds[name] = [], []
            for case in cases:
                started = time.perf_counter()
                prediction = inferer(case["image"].as_tensor()[None], network).argmax(1, keepdim=True)
                seconds[name].append(time.perf_counter() - started)
                labels[name].append(prediction)
                metric(one_hot(prediction, 3), one_hot(case["label"].as_tensor()[None].long(), 3))
            results[name] = metric.aggregate()
    today = results[TODAY]
    rows = []
    for name in VARIANTS:
        per_class = results[name]
        changed = sum((a != b).sum().item() for a, b in zip(labels[name], labels[TODAY]))
        total = sum(a.numel() for a in labels[TODAY])
        rows.append(
            f"| {name} | {per_class.mean():.4f} | {per_class[0]:.4f} | {per_class[1]:.4f} | "
            f"{(per_class.mean() - today.mean()).abs():.4f} | {100 * changed / total:.3f} | "
            f"{statistics.median(seconds[name]):.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 CT slices, 1 round, 4 validation cases")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2, as in issue 19)")
    parser.add_argument("--slices", type=int, default=8, help="CT slices timed (centred slab)")
    parser.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds (default 5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, num_slices, limit = (1, 2, 4) if args.quick else (args.rounds, args.slices, None)
    ct, shape = ct_rows(args.threads, repeats, num_slices)
    dice = dice_rows(limit)
    body = "\n".join(
        [
            f"Hippocampus bundle (UNet base 32, k = 2, shipped weights). {conditions()}.",
            "",
            f"CT series tests/data/dicom/totalseg_ct20 after the bundle's preprocessing: {shape} at 1 mm; "
            f"{num_slices} centred slices timed, medians of {repeats} interleaved round(s). 'CPU s / threads' is the "
            "process's CPU time per slice divided by the thread count: the wall time to expect on idle cores.",
            "",
            "| inferer | windows per slice | s per slice (wall) | s per slice (CPU s / threads) | "
            "network only, s per slice | speed-up vs today (wall) |",
            "|---|---|---|---|---|---|",
            *ct,
            "",
            f"Validation split ({len(dice) and 'the 40 cases' if limit is None else f'first {limit} cases'} of "
            "msd_hippocampus, `msd_datalist(dir, 'validation', 5)`), bundle validation preprocessing:",
            "",
            "| inferer | mean Dice | anterior | posterior | abs Dice difference vs today | voxels labelled "
            "differently vs today (%) | median s per volume |",
            "|---|---|---|---|---|---|---|",
            *dice,
        ]
    )
    print("\n" + body)
    if not args.quick:
        write_result("end_to_end", "End to end on a CPU: window size and precision", body)


if __name__ == "__main__":
    main()
