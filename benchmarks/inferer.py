"""Benchmark SlidingWindowSliceInferer against the bare network and MONAI's SliceInferer / 2.5D emulation.

Run: ``.venv/bin/python benchmarks/inferer.py [--quick] [--threads N] [--only-efficiency]``. Prints markdown tables
of ratios measured side by side in one run and writes them to ``benchmarks/results/inferer.md``.

The first table is the inferer's own cost with a cheap network, where it shows (issue 19): a 3-convolution
network (5→32→32→3, 3×3, 3×3, 1×1) on a 240×240×155 volume, k = 2, 160² windows, overlap 0.25, sw_batch_size 8;
efficiency = network alone over exactly the windows the inferer builds (recorded, same batches) / inferer, medians
of interleaved rounds, at 1 and 2 threads, for the vectorised inferer (runs of slices; indexed gather), with
``channels_last`` windows, and for the per-window loop this package used before (``loop_inferer`` below).

What is measured (2D ``monai_unet2.networks.UNet``, base 32 features, random weights, eval mode, ``torch.no_grad``):

- efficiency: time of the bare network forward over exactly the windows our inferer builds (recorded from a run,
  same batches) divided by the time of our inferer on the volume; 1.0 means no overhead at all.
- ours (context 0) against MONAI ``SliceInferer`` with the same window settings: speed ratio and max abs difference.
- ours (context 2) against the fairest 2.5D emulation we could design with MONAI: stack the ``2k+1`` replicate-padded
  shifted copies of the volume as channels (the smallest extra a MONAI-only 2.5D needs, ``(2k+1)x`` the input)
  and run ``SliceInferer`` (2D windows, one slice each) on it. Windowing the slice axis with ``roi (h, w, 2k+1)``
  in ``sliding_window_inference`` would instead blend the centre prediction into ``2k+1`` output slices, which is
  not 2.5D.
- peak memory (subprocess per configuration, peak RSS rise over a baseline taken after loading the full volume,
  with the kernel's peak counter reset there through ``/proc/self/clear_refs``) of ours
  and of the emulation on the full volumes, minus the output and the network activations (measured by a bare
  forward of one window batch). A one-layer network is used there: the inferer's own memory does not depend on
  the network, and the full volumes through a base-32 UNet would take many minutes on this machine.

Times are CPU seconds of the benchmark process (``time.process_time``): on a shared machine wall time swings by
tens of percent with the other users' load. Each pair is interleaved and the fastest of the repeats is kept. The
overhead column times our inferer with a network that returns zeros: the inferer's own work per window, which
bounds the efficiency from below at ``1 / (1 + overhead)`` whatever the noise. The "null net" columns compare
the inferers' own work the same way (the network dominates every end-to-end time on a CPU).
Timing the full volumes with a base-32 UNet on a shared 2-core CPU would take tens of minutes, so times are taken on
a centred sub-volume of a few slices (the window grid is per slice, so per-slice ratios carry over).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from monai.inferers import SliceInferer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import conditions, interleaved, write_result  # noqa: E402
from monai_unet2.inferers import SlidingWindowSliceInferer  # noqa: E402
from monai_unet2.inferers.slice_windows import build_plane_window_grid, neighbour_indices  # noqa: E402

SW_BATCH_SIZE = 8
CONTEXT = 2


def make_unet(in_channels: int) -> tuple[torch.nn.Module, str]:
    """Base-32 2D UNet (ours if importable, else MONAI BasicUNet with matching widths)."""
    torch.manual_seed(0)
    try:
        from monai_unet2.networks import UNet

        return UNet(spatial_dims=2, in_channels=in_channels, out_channels=3, features=32).eval(), "monai_unet2 UNet"
    except ImportError:
        from monai.networks.nets import BasicUNet

        network = BasicUNet(2, in_channels, 3, features=(32, 64, 128, 256, 512, 32)).eval()
        return network, "MONAI BasicUNet (32..512)"


def stacked_emulation_input(volume: torch.Tensor, context: int, slice_axis: int) -> torch.Tensor:
    """The (2k+1)-fold input a MONAI-only 2.5D needs: replicate-padded shifted copies as channels c*(2k+1)+j."""
    axis = slice_axis + 2
    indices = neighbour_indices(volume.shape[axis], context)
    shifted = [volume.index_select(axis, indices[:, j]) for j in range(2 * context + 1)]
    return torch.stack(shifted, dim=2).flatten(1, 2)


def emulation(volume, network, roi, overlap, context, slice_axis=2):
    stacked = stacked_emulation_input(volume, context, slice_axis)
    return monai_slice_inferer(roi, overlap, slice_axis)(stacked, network)


def monai_slice_inferer(roi, overlap, slice_axis=2) -> SliceInferer:
    """MONAI's SliceInferer with our settings (it needs an explicit 2D roi: -1 entries mean the full extent)."""
    roi = (-1, -1) if roi is None else roi
    return SliceInferer(roi_size=roi, sw_batch_size=SW_BATCH_SIZE, spatial_dim=slice_axis, overlap=overlap)


def timed(function, *args):
    """CPU time of this process (not wall time, which on a shared machine mostly measures the other users)."""
    start = time.process_time()
    result = function(*args)
    return time.process_time() - start, result


class WindowRecorder(torch.nn.Module):
    """Returns zeros (a null network); with ``record=True`` also stores every window batch it is given."""

    def __init__(self, out_channels: int, record: bool = False):
        super().__init__()
        self.out_channels, self.record, self.batches = out_channels, record, []

    def forward(self, x):
        if self.record:
            self.batches.append(x.clone())
        return x.new_zeros((x.shape[0], self.out_channels, *x.shape[2:]))


def replay(network, batches) -> None:
    for batch in batches:
        network(batch)


def time_configuration(shape, sub_slices, roi, overlap, net1, net5, repeats):
    """Times of every method on a centred sub-volume; each pair interleaved ``repeats`` times, fastest kept."""
    torch.manual_seed(1)
    full = torch.randn(1, 1, *shape)
    first = shape[2] // 2 - sub_slices // 2
    volume = full[..., first : first + sub_slices].contiguous()
    ours2 = SlidingWindowSliceInferer(roi, SW_BATCH_SIZE, 2, CONTEXT, overlap)
    ours0 = SlidingWindowSliceInferer(roi, SW_BATCH_SIZE, 2, 0, overlap)
    monai_slice = monai_slice_inferer(roi, overlap)
    recorder = WindowRecorder(3, record=True)
    times: dict[str, list[float]] = {}
    outputs = {}

    def run(name, function, *args):
        elapsed, outputs[name] = timed(function, *args)
        times.setdefault(name, []).append(elapsed)

    with torch.no_grad():
        ours2(volume, recorder)
        batches = recorder.batches
        replay(net5, batches[:1])
        replay(net1, [b[:, CONTEXT : CONTEXT + 1] for b in batches[:1]])
        for _ in range(repeats):
            run("bare", replay, net5, batches)
            run("ours2", ours2, volume, net5)
            run("null", ours2, volume, WindowRecorder(3))
            run("null_emulation", emulation, volume, WindowRecorder(3), roi, overlap, CONTEXT)
            run("null_ours0", ours0, volume, WindowRecorder(3))
            run("null_slice", monai_slice, volume, WindowRecorder(3))
            run("emulation", emulation, volume, net5, roi, overlap, CONTEXT)
            run("ours0", ours0, volume, net1)
            run("slice", monai_slice, volume, net1)
    best = {name: min(values) for name, values in times.items()}
    t_ours2 = best["ours2"]
    return {
        "windows": sum(b.shape[0] for b in batches),
        "efficiency": best["bare"] / t_ours2,
        "overhead": best["null"] / best["bare"],
        "vs_slice": best["slice"] / best["ours0"],
        "vs_slice_null": best["null_slice"] / best["null_ours0"],
        "vs_emulation_null": best["null_emulation"] / best["null"],
        "diff_slice": (outputs["ours0"] - outputs["slice"]).abs().max().item(),
        "vs_emulation": best["emulation"] / t_ours2,
        "diff_emulation": (outputs["ours2"] - outputs["emulation"]).abs().max().item(),
        "t_ours2": t_ours2,
    }


def cheap_network() -> torch.nn.Module:
    """The issue's cheap network: three convolutions, 5 → 32 → 32 → 3 channels (random weights, eval mode)."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(5, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1)]
    return torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.Conv2d(32, 3, 1)).eval()


def loop_inferer(volume, network, roi, overlap, context, sw_batch_size=SW_BATCH_SIZE):
    """The per-window algorithm used before issue 19 (D axis, no padding): for every window of a batch, one plane
    copy per neighbour slice, and one ``addcmul_`` per window to blend."""
    stack, target = volume.movedim(4, 2), None
    grid = build_plane_window_grid(stack.shape[3:], roi, overlap, "constant", 0.125, volume.device)
    neighbours = neighbour_indices(stack.shape[2], context).tolist()
    total = stack.shape[0] * stack.shape[2] * len(grid)
    for start in range(0, total, sw_batch_size):
        places = [divmod(item, len(grid)) for item in range(start, min(start + sw_batch_size, total))]
        batch = torch.empty((len(places), stack.shape[1] * (2 * context + 1), *grid.window_size))
        for row, (slice_index, window) in enumerate(places):
            region = stack[(0, slice(None), slice(None), *grid.source[window])]
            stacked = batch[row].view(stack.shape[1], 2 * context + 1, *grid.window_size)
            for position, index in enumerate(neighbours[slice_index]):
                stacked[:, position].copy_(region[:, index])
        prediction = network(batch)
        if target is None:
            output = torch.zeros((1, prediction.shape[1], *volume.shape[2:]))
            target = output.movedim(4, 2)
        for row, (slice_index, window) in enumerate(places):
            target[(0, slice(None), slice_index, *grid.source[window])].addcmul_(prediction[row], grid.weights[window])
    return output


class ClockedNetwork(torch.nn.Module):
    """Runs the network and adds up the CPU time of its calls, so that the network's share of one inferer run is
    measured within that run (no pairing of runs taken at different moments of a shared machine)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network, self.inside, self.total = network, [], []

    def forward(self, x):
        started = time.process_time()
        out = self.network(x)
        self.inside[-1] += time.process_time() - started
        return out

    def run(self, method, volume):
        self.inside.append(0.0)
        started = time.process_time()
        method(volume, self)
        self.total.append(time.process_time() - started)

    def share(self) -> float:
        """Median over runs of (CPU time inside the network) / (CPU time of the whole inferer call)."""
        return statistics.median(a / b for a, b in zip(self.inside, self.total))


def efficiency_rows(threads: int, repeats: int, num_slices: int) -> list[str]:
    """Efficiency and overhead of each way of building and blending windows, with the cheap network."""
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    volume = torch.randn(1, 1, 240, 240, num_slices)
    roi, overlap, network = (160, 160), 0.25, cheap_network()
    methods = {
        "vectorised, runs of slices (default on CPU)": SlidingWindowSliceInferer(
            roi, SW_BATCH_SIZE, 2, CONTEXT, overlap, window_batching="runs"
        ),
        "vectorised, runs, channels_last windows": SlidingWindowSliceInferer(
            roi, SW_BATCH_SIZE, 2, CONTEXT, overlap, window_batching="runs", channels_last=True
        ),
        "vectorised, one indexed gather / index_put_ (GPU default)": SlidingWindowSliceInferer(
            roi, SW_BATCH_SIZE, 2, CONTEXT, overlap, window_batching="indexed"
        ),
        "per-window loop (before)": lambda x, net: loop_inferer(x, net, roi, overlap, CONTEXT),
    }
    batches, candidates, clocks = {}, {}, {}
    with torch.no_grad():
        for name, method in methods.items():
            recorder = WindowRecorder(3, record=True)
            method(volume, recorder)
            batches[name] = recorder.batches
            candidates[f"bare {name}"] = lambda b=recorder.batches: replay(network, b)
            clocked = ClockedNetwork(network)
            clocks[name] = clocked
            candidates[name] = lambda m=method, c=clocked: c.run(m, volume)
            candidates[f"null {name}"] = lambda m=method: m(volume, WindowRecorder(3))
        reference = methods["per-window loop (before)"](volume, network)
        differences = {name: (m(volume, network) - reference).abs().max().item() for name, m in methods.items()}
        timings = interleaved(candidates, repeats)
    rows = []
    for name in methods:
        rows.append(
            f"| {threads} | {name} | {sum(b.shape[0] for b in batches[name])} | {timings.wall(name):.2f} | "
            f"{timings.ratio(f'bare {name}', name, 'wall'):.3f} | {timings.ratio(f'bare {name}', name, 'cpu'):.3f} | "
            f"{clocks[name].share():.3f} | {timings.cpu(f'null {name}') / timings.cpu(f'bare {name}'):.3f} | "
            f"{differences[name]:.1e} |"
        )
        print(rows[-1], flush=True)
    return rows


EFFICIENCY_HEADER = [
    "| threads | windows built and blended by | windows | inferer, median wall s | efficiency (wall) | "
    "efficiency (CPU time) | network share of the inferer's own run (CPU) | overhead (null net / bare net, CPU) | "
    "max abs diff vs loop |",
    "|---|---|---|---|---|---|---|---|---|",
]


MEMORY_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {repo!r})
from benchmarks.inferer import emulation
from monai_unet2.inferers import SlidingWindowSliceInferer
torch.set_num_threads({threads})
def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")
torch.manual_seed(0)
net = torch.nn.Conv2d(5, 3, 3, padding=1).eval()
volume = torch.randn(1, 1, *{shape!r})
roi, overlap = {roi!r}, {overlap!r}
ours = SlidingWindowSliceInferer(roi, {sw}, 2, 2, overlap)
with torch.no_grad():
    ours(volume[..., :6], net)
    emulation(volume[..., :6], net, roi, overlap, 2)
    base = reset_peak()
    net(torch.randn({sw}, 5, *(volume.shape[2:4] if roi is None else roi)))
    activations = status("VmHWM") - base
    base = reset_peak()
    out = ours(volume, net) if {method!r} == "ours" else emulation(volume, net, roi, overlap, 2)
    total = status("VmHWM") - base
print(json.dumps({{"input": volume.nbytes, "output": out.nbytes, "activations": activations, "total": total}}))
"""


def peak_memory(method: str, shape, roi, overlap, threads: int) -> dict:
    script = MEMORY_SCRIPT.format(
        repo=str(REPO), shape=tuple(shape), roi=roi, overlap=overlap, sw=SW_BATCH_SIZE, method=method, threads=threads
    )
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # freed large blocks leave RSS at once
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO, env=environment
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def efficiency_table(quick: bool) -> None:
    """The cheap-network table at 1 and 2 threads, printed and written to ``results/inferer_efficiency.md``."""
    rounds, num_slices = (1, 24) if quick else (5, 155)
    rows = []
    for threads in (1, 2):
        rows += efficiency_rows(threads, rounds, num_slices)
    body = "\n".join(
        [
            f"Cheap network (3 convolutions 5→32→32→3), volume 240×240×{num_slices}, k = 2, 160² windows, overlap "
            f"0.25, sw_batch_size {SW_BATCH_SIZE}; medians of {rounds} interleaved round(s); {conditions()}.",
            "",
            *EFFICIENCY_HEADER,
            *rows,
        ]
    )
    print("\n" + body)
    write_result("inferer_efficiency", "SlidingWindowSliceInferer: its own cost with a cheap network", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer configurations and slices (under ~2 minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: shared machine)")
    parser.add_argument("--only-efficiency", action="store_true", help="only the cheap-network efficiency table")
    parser.add_argument("--skip-efficiency", action="store_true", help="all but the cheap-network efficiency table")
    args = parser.parse_args()
    if not args.skip_efficiency:
        efficiency_table(args.quick)
    if args.only_efficiency:
        return
    torch.set_num_threads(args.threads)
    net1, net_name = make_unet(1)
    net5, _ = make_unet(2 * CONTEXT + 1)
    if args.quick:
        repeats = 1
        timing = [((240, 240, 155), 2, (160, 160), 0.25)]
        memory = [((240, 240, 155), (160, 160), 0.5)]
    else:
        repeats = 2
        timing = [
            ((240, 240, 155), 4, (160, 160), 0.25),
            ((240, 240, 155), 4, (160, 160), 0.5),
            ((240, 240, 155), 4, None, 0.25),
            ((512, 512, 64), 1, (160, 160), 0.25),
            ((512, 512, 64), 1, None, 0.25),
        ]
        memory = [((240, 240, 155), (160, 160), 0.5), ((512, 512, 64), None, 0.25)]
    lines = [
        f"Network: {net_name}, base 32, 3 classes, random weights; sw_batch_size {SW_BATCH_SIZE}; "
        f"{args.threads} torch thread(s); CPU; times on a centred sub-volume of the listed number of slices, "
        f"CPU time, fastest of {repeats} interleaved repeat(s); context k=2 unless marked k=0.",
        "",
        "| volume | slices timed | ROI | overlap | windows | efficiency (bare net / ours) | "
        "overhead (ours with null net / bare net) | MONAI SliceInferer / ours (k=0) | same, null net | "
        "max abs diff | 2.5D emulation / ours | same, null net | max abs diff | ours, CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    started = time.perf_counter()
    for shape, slices, roi, overlap in timing:
        r = time_configuration(shape, slices, roi, overlap, net1, net5, repeats)
        roi_text = "full slice" if roi is None else f"{roi[0]}²"
        lines.append(
            f"| {'×'.join(map(str, shape))} | {slices} | {roi_text} | {overlap} | {r['windows']} | "
            f"{r['efficiency']:.2f} | {r['overhead']:.3f} | {r['vs_slice']:.2f} | {r['vs_slice_null']:.1f} | "
            f"{r['diff_slice']:.1e} | {r['vs_emulation']:.2f} | {r['vs_emulation_null']:.1f} | "
            f"{r['diff_emulation']:.1e} | {r['t_ours2']:.1f} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "Peak memory, k=2, full volume, one-layer network (MiB; extra = peak RSS rise - output - activations):",
        "",
        "| volume | ROI | overlap | input | output | extra, ours | extra, 2.5D emulation | "
        "emulation / ours (peak rise) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape, roi, overlap in memory:
        ours = peak_memory("ours", shape, roi, overlap, args.threads)
        emul = peak_memory("emulation", shape, roi, overlap, args.threads)
        extra_ours = ours["total"] - ours["output"] - ours["activations"]
        extra_emul = emul["total"] - emul["output"] - emul["activations"]
        roi_text = "full slice" if roi is None else f"{roi[0]}²"
        lines.append(
            f"| {'×'.join(map(str, shape))} | {roi_text} | {overlap} | {mib(ours['input'])} | {mib(ours['output'])} | "
            f"{mib(extra_ours)} | {mib(extra_emul)} | {emul['total'] / max(ours['total'], 1):.1f} |"
        )
        print(lines[-1], flush=True)
    run_kind = "--quick" if args.quick else "full"
    lines += ["", f"Total benchmark time: {time.perf_counter() - started:.0f} s ({run_kind})."]
    table = "\n".join(lines)
    print("\n" + table)
    out = REPO / "benchmarks" / "results" / "inferer.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# SlidingWindowSliceInferer benchmark\n\n" + table + "\n")


if __name__ == "__main__":
    main()
