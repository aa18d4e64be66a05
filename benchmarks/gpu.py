"""GPU figures of SlidingWindowSliceInferer: one command, under 5 minutes on a GPU.

Run on a GPU machine: ``.venv/bin/python benchmarks/gpu.py`` (a 512×512×300 volume, a 2.5D UNet of base 64,
k = 2, bf16 autocast, whole 512² slices, ``sw_batch_size`` 16). It prints one markdown table, and on a GPU writes it
to ``benchmarks/results/gpu.md``:

- end-to-end seconds of the inferer on a GPU-resident volume (both ways of batching windows: runs of slices and
  one indexed gather / ``index_put_`` per batch), and with volume and output in CPU memory (``device="cpu"``);
- network-only seconds: the bare network over exactly the windows the inferer built (recorded), the lower bound;
- efficiency = network only / end to end;
- MONAI ``SliceInferer`` (k = 0, a 1-channel UNet) against ours with k = 0 on the same volume, same settings;
- peak GPU memory of each (``torch.cuda.max_memory_allocated``, reset before each).

Times are medians of ``--repeats`` runs after a warm-up (cuDNN autotuning on), each ended by
``torch.cuda.synchronize()``. On a machine without a GPU it runs on the CPU; use small sizes there, e.g.
``--size 64 --slices 6 --features 8`` (that is what the test suite does).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.inferers import SliceInferer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import conditions, write_result  # noqa: E402
from monai_unet2.inferers import SlidingWindowSliceInferer, resolve_amp_dtype  # noqa: E402
from monai_unet2.networks import UNet  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(function: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float | None]:
    """Median seconds of ``function`` after one warm-up call, and its peak GPU memory in GiB (None on a CPU)."""
    function()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(seconds), peak


class Recorder(torch.nn.Module):
    """Runs the network and keeps every window batch it was given (on the network's device)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network, self.batches = network, []

    def forward(self, x):
        self.batches.append(x.clone())
        return self.network(x)


def run_benchmark(
    size: int, slices: int, features: int, sw_batch_size: int, device: str, repeats: int, context: int = 2
) -> dict[str, dict]:
    """Every measurement of the table, as ``name -> {"seconds", "peak_gib", ...}``.

    Args:
        size: in-plane size of the square slices.
        slices: number of slices.
        features: base width of the UNets.
        sw_batch_size: whole slices per network call.
        device: ``"cuda"``, ``"cpu"`` or ``"auto"``.
        repeats: timed runs per measurement (median).
        context: neighbours on each side for the 2.5D network.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp = resolve_amp_dtype(True, device) or torch.bfloat16
    torch.manual_seed(0)
    volume = torch.randn(1, 1, size, size, slices, device=device)
    net25 = UNet(2, 2 * context + 1, 3, features).to(device).eval().to(memory_format=torch.channels_last)
    net2d = UNet(2, 1, 3, features).to(device).eval().to(memory_format=torch.channels_last)
    common = {"roi_size": None, "sw_batch_size": sw_batch_size, "slice_axis": 2, "amp": amp, "channels_last": True}
    ours = {
        "ours, k=2, runs of slices": SlidingWindowSliceInferer(
            context_slices=context, window_batching="runs", **common
        ),
        "ours, k=2, indexed batches": SlidingWindowSliceInferer(
            context_slices=context, window_batching="indexed", **common
        ),
    }
    results: dict[str, dict] = {}
    with torch.no_grad():
        recorder = Recorder(net25)
        ours["ours, k=2, runs of slices"](volume, recorder)

        def network_only():
            with torch.autocast(device.type, dtype=amp):
                for batch in recorder.batches:
                    net25(batch)

        seconds, peak = measure(network_only, device, repeats)
        results["network only, same windows"] = {"seconds": seconds, "peak_gib": peak}
        windows = sum(b.shape[0] for b in recorder.batches)
        recorder.batches = []
        for name, inferer in ours.items():
            seconds, peak = measure(lambda i=inferer: i(volume, net25), device, repeats)
            results[name] = {"seconds": seconds, "peak_gib": peak}
        cpu_volume = volume.cpu()
        host = SlidingWindowSliceInferer(context_slices=context, sw_device=device, device="cpu", **common)
        seconds, peak = measure(lambda: host(cpu_volume, net25), device, repeats)
        results["ours, k=2, volume and output in CPU memory"] = {"seconds": seconds, "peak_gib": peak}
        flat = SlidingWindowSliceInferer(context_slices=0, **common)
        monai = SliceInferer(roi_size=(size, size), sw_batch_size=sw_batch_size, spatial_dim=2)

        def monai_call():
            with torch.autocast(device.type, dtype=amp):
                return monai(volume, net2d)

        seconds, peak = measure(lambda: flat(volume, net2d), device, repeats)
        results["ours, k=0"] = {"seconds": seconds, "peak_gib": peak}
        seconds, peak = measure(monai_call, device, repeats)
        results["MONAI SliceInferer, k=0"] = {"seconds": seconds, "peak_gib": peak}
        difference = (flat(volume, net2d).float() - monai_call().float()).abs().max().item()
    bare = results["network only, same windows"]["seconds"]
    for name in ours:
        results[name]["efficiency"] = bare / results[name]["seconds"]
    results["MONAI SliceInferer, k=0"]["max_abs_diff_vs_ours"] = difference
    results["meta"] = {"device": str(device), "amp": str(amp), "windows": windows}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="in-plane size (default 512)")
    parser.add_argument("--slices", type=int, default=300, help="number of slices (default 300)")
    parser.add_argument("--features", type=int, default=64, help="UNet base width (default 64)")
    parser.add_argument("--sw-batch-size", type=int, default=16, help="whole slices per network call (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    args = parser.parse_args()
    started = time.perf_counter()
    results = run_benchmark(args.size, args.slices, args.features, args.sw_batch_size, args.device, args.repeats)
    meta = results.pop("meta")
    name = torch.cuda.get_device_name() if meta["device"].startswith("cuda") else "CPU"
    lines = [
        f"{name}; volume {args.size}×{args.size}×{args.slices}, UNet base {args.features}, whole slices, "
        f"sw_batch_size {args.sw_batch_size}, autocast {meta['amp']}, channels_last, {meta['windows']} windows; "
        f"median of {args.repeats}; {conditions()}.",
        "",
        "| inferer | seconds | efficiency (network only / this) | peak GPU memory (GiB) | note |",
        "|---|---|---|---|---|",
    ]
    for key, value in results.items():
        efficiency = f"{value['efficiency']:.3f}" if "efficiency" in value else ""
        peak = "" if value["peak_gib"] is None else f"{value['peak_gib']:.2f}"
        note = (
            f"max abs diff vs ours k=0: {value['max_abs_diff_vs_ours']:.1e}" if "max_abs_diff_vs_ours" in value else ""
        )
        lines.append(f"| {key} | {value['seconds']:.3f} | {efficiency} | {peak} | {note} |")
    lines += ["", f"Whole benchmark: {time.perf_counter() - started:.0f} s."]
    table = "\n".join(lines)
    print(table)
    if meta["device"].startswith("cuda"):
        write_result("gpu", "SlidingWindowSliceInferer on a GPU", table)


if __name__ == "__main__":
    main()
