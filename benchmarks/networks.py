"""Benchmark of monai_unet2.networks: parameters, GFLOP per forward, throughput, and the cost / gain of checkpointing.

Run: ``.venv/bin/python benchmarks/networks.py [--quick] [--threads N]``. Prints markdown tables and writes them to
``benchmarks/results/networks.md``. GFLOP are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta
device (2 FLOP per multiply-add, i.e. GFLOP = 2 × GMAC), so they do not depend on the machine. Throughputs are
measured side by side in one run; on a shared machine only their ratios are meaningful.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.networks.nets import UNet as MonaiUNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from monai_unet2.networks import U2Net, UNet

RESULTS = Path(__file__).resolve().parent / "results" / "networks.md"

# name, constructor, input shapes (C, H, W) to time, reference GFLOP (REFERENCE.md) as (shape, value)
NETWORKS: list[tuple[str, Callable[[], nn.Module], list[tuple[int, int, int]], tuple | None]] = [
    ("UNet 64, transposed, 1→2", lambda: UNet(2, 1, 2, 64), [(1, 256, 256), (1, 512, 512)], ((1, 512, 512), 384.7)),
    (
        "UNet 64, bilinear, 3→2",
        lambda: UNet(2, 3, 2, 64, bilinear=True),
        [(3, 256, 256), (3, 512, 512)],
        ((3, 512, 512), 319.9),
    ),
    ("U2Net full, 3→1", lambda: U2Net(2, 3, 1, "full"), [(3, 320, 320)], ((3, 320, 320), 117.2)),
    ("U2Net small, 3→1", lambda: U2Net(2, 3, 1, "small"), [(3, 320, 320)], ((3, 320, 320), 39.5)),
    (
        "MONAI UNet 64..1024, 2 res units, 1→2",
        lambda: MonaiUNet(2, 1, 2, (64, 128, 256, 512, 1024), (2, 2, 2, 2), num_res_units=2),
        [(1, 256, 256), (1, 512, 512)],
        ((1, 512, 512), 95.8),
    ),
]


def gflop(make_net: Callable[[], nn.Module], shape: tuple[int, ...]) -> float:
    """FLOP of one forward pass of a batch of one ``shape`` input, in units of 1e9, counted on the meta device."""
    with torch.device("meta"):
        net = make_net().eval()
        x = torch.empty(1, *shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() / 1e9


def images_per_second(net: nn.Module, x: torch.Tensor, train: bool, repeats: int) -> float:
    """Throughput of forward (eval, no grad) or forward + backward (train) passes: one warm-up pass, then the fastest
    of ``repeats`` timed passes (the least disturbed by other load on a shared machine)."""
    net.train(train)

    def step() -> None:
        if train:
            net.zero_grad(set_to_none=True)
            out = net(x)
            (out[0] if isinstance(out, list) else out).float().mean().backward()
        else:
            with torch.no_grad():
                net(x)

    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return x.shape[0] / best


def saved_activation_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct storages autograd keeps between forward and backward (weights excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = net(x)
    out.mean().backward()
    return sum(saved.values())


def _memory_status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (resident peak) of this process, from /proc/self/status (Linux).

    ``getrusage``'s ``ru_maxrss`` is not used: Linux carries the parent's peak over fork + exec into it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def peak_training_rss(checkpointing: bool, size: int, batch: int) -> int:
    """In a fresh process: peak resident memory of one training step above the resident memory before it.

    It includes what checkpointing cannot save (weight gradients, convolution workspaces, allocator slack), so its
    ratio is closer to 1 than the ratio of kept activations."""
    code = (
        f"import torch, sys; torch.set_num_threads({torch.get_num_threads()}); "
        f"sys.path.insert(0, {str(Path(__file__).parent)!r}); from networks import _child_peak; "
        f"print(_child_peak({checkpointing!r}, {size}, {batch}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def _child_peak(checkpointing: bool, size: int, batch: int) -> int:
    torch.manual_seed(0)
    net = UNet(2, 1, 2, 64, checkpointing=checkpointing).train()
    x = torch.randn(batch, 1, size, size)
    before = _memory_status_bytes("VmRSS")
    net(x).mean().backward()
    return _memory_status_bytes("VmHWM") - before


def checkpointing_rows(size: int, batch: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    plain = UNet(2, 1, 2, 64).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpointing = True
    x = torch.randn(batch, 1, size, size)
    saved = [saved_activation_bytes(net, x) / 2**20 for net in (plain, checkpointed)]
    peaks = [peak_training_rss(flag, size, batch) / 2**20 for flag in (False, True)]
    speed = [images_per_second(net, x, train=True, repeats=repeats) for net in (plain, checkpointed)]
    return [
        f"| activations kept for backward (MiB) | {saved[0]:.0f} | {saved[1]:.0f} | {saved[1] / saved[0]:.2f} |",
        f"| peak RSS of a training step (MiB, fresh process) | {peaks[0]:.0f} | {peaks[1]:.0f} | "
        f"{peaks[1] / peaks[0]:.2f} |",
        f"| forward + backward time per image (s) | {1 / speed[0]:.2f} | {1 / speed[1]:.2f} | "
        f"{speed[0] / speed[1]:.2f} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smallest size per network, smaller checkpointing case")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1

    load = os.getloadavg()[0]
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, fp32, batch 1"
        + (", --quick" if args.quick else "")
        + f"; load average {load:.1f} on {os.cpu_count()} cores at the start (timings are noisy when it exceeds them)",
        "",
        "| network | parameters | input | GFLOP / forward | reference GFLOP | forward img/s | fwd+bwd img/s |"
        " fwd+bwd / fwd time |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name, make_net, shapes, reference in NETWORKS:
        torch.manual_seed(0)
        net = make_net()
        parameters = sum(p.numel() for p in net.parameters())
        for shape in shapes[:1] if args.quick else shapes:
            x = torch.randn(1, *shape)
            forward = images_per_second(net, x, train=False, repeats=repeats)
            both = images_per_second(net, x, train=True, repeats=repeats)
            ref = f"{reference[1]:.1f}" if reference and tuple(reference[0]) == shape else ""
            input_text = f"{shape[0]}×{shape[1]}²"
            row = (
                f"| {name} | {parameters:,} | {input_text} | {gflop(make_net, shape):.1f} | {ref} | {forward:.2f} |"
                f" {both:.2f} | {forward / both:.2f} |"
            )
            lines.append(row)
            print(row, flush=True)

    size, batch = (128, 2) if args.quick else (256, 2)
    header = [
        "",
        f"Gradient checkpointing, UNet 64 transposed, training step on {batch}×1×{size}²:",
        "",
        "| measure | plain | checkpointing | ratio |",
        "|---|---:|---:|---:|",
    ]
    print("\n".join(header), flush=True)
    rows = checkpointing_rows(size, batch, repeats=1 if args.quick else 2)
    print("\n".join(rows))
    lines += header + rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
