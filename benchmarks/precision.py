"""Mixed precision, memory layout and torch.compile for the shipped hippocampus UNet on this CPU.

Run: ``.venv/bin/python benchmarks/precision.py [--quick] [--threads 2] [--no-compile]``. Prints two markdown tables
and writes them to ``benchmarks/results/precision.md``:

- inference: the shipped UNet (base 32, 5 → 3 channels, ``bundles/hippocampus_unet25d_segmentation/models/model.pt``)
  on a batch of 8 × 5 × 256 × 256, eval mode, ``torch.no_grad``: fp32, ``channels_last`` input, bf16 autocast,
  both, and both with ``torch.compile`` (inductor, weights frozen), through
  :class:`monai_unet2.inferers.AutocastInferer` as a bundle would run them; max |logit difference| and the share of
  pixels whose label (argmax) differs from fp32.
- training: one step (forward, cross-entropy loss, backward, AdamW step) on a batch of 32 × 5 × 48 × 64 (the
  bundle's training window), fp32 against bf16 autocast with and without ``channels_last`` (input only, and
  network and input), through ``AutocastInferer`` as ``SupervisedTrainer``'s inferer.

Ratios are medians over interleaved rounds of time(fp32) / time(variant) taken in the same round; the machine is
shared, so absolute seconds swing with the other jobs.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import conditions, interleaved, write_result  # noqa: E402
from monai_unet2.inferers import AutocastInferer, cpu_supports_bf16  # noqa: E402
from monai_unet2.networks import UNet  # noqa: E402

WEIGHTS = REPO / "bundles" / "hippocampus_unet25d_segmentation" / "models" / "model.pt"


def shipped_unet() -> torch.nn.Module:
    """The hippocampus bundle's UNet with its shipped weights."""
    network = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32)
    network.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return network


def compiled(network: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with inductor's weight freezing (constant-folds batch norm into the convolutions)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(network)


def inference_rows(repeats: int, batch: int, size: int, with_compile: bool) -> list[str]:
    """Inference variants of the shipped UNet on one batch, against fp32."""
    torch.manual_seed(0)
    network = shipped_unet().eval()
    x = torch.randn(batch, 5, size, size)
    variants = {
        "fp32 (today)": (network, AutocastInferer(amp=False)),
        "channels_last": (network, AutocastInferer(amp=False, channels_last=True)),
        "bf16 autocast": (network, AutocastInferer(amp="bfloat16")),
        "bf16 + channels_last": (network, AutocastInferer(amp="bfloat16", channels_last=True)),
    }
    compile_seconds = None
    if with_compile:
        fast = compiled(copy.deepcopy(network))
        inferer = AutocastInferer(amp="bfloat16", channels_last=True)
        started = time.perf_counter()
        with torch.no_grad():
            inferer(x, fast)
        compile_seconds = time.perf_counter() - started
        variants["bf16 + channels_last + torch.compile"] = (fast, inferer)
    with torch.no_grad():
        outputs = {name: inferer(x, net) for name, (net, inferer) in variants.items()}
        candidates = {name: (lambda n=net, i=inferer: i(x, n)) for name, (net, inferer) in variants.items()}
        timings = interleaved(candidates, repeats)
    reference = outputs["fp32 (today)"]
    rows = []
    for name in variants:
        difference = (outputs[name] - reference).abs().max().item()
        changed = (outputs[name].argmax(1) != reference.argmax(1)).float().mean().item()
        rows.append(
            f"| {name} | {timings.wall(name):.3f} | {timings.ratio('fp32 (today)', name):.2f} | "
            f"{timings.ratio('fp32 (today)', name, 'cpu'):.2f} | {difference:.3f} | {100 * changed:.3f} |"
        )
        print(rows[-1], flush=True)
    if compile_seconds is not None:
        rows.append(f"| (first call of the compiled network, compiling included: {compile_seconds:.0f} s) | | | | | |")
    return rows


def training_rows(repeats: int, batch: int) -> list[str]:
    """One training step of the shipped UNet in each precision / layout, against fp32."""
    torch.manual_seed(0)
    x = torch.randn(batch, 5, 48, 64)
    y = torch.randint(0, 3, (batch, 48, 64))
    variants = {
        "fp32 (today)": (False, False, False),
        "channels_last": (False, True, True),
        "bf16 autocast": (True, False, False),
        "bf16 + channels_last input": (True, True, False),
        "bf16 + channels_last input and network": (True, True, True),
    }
    steps, losses = {}, {}
    for name, (bf16, layout, network_layout) in variants.items():
        network = shipped_unet().train()
        if network_layout:
            network = network.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
        inferer = AutocastInferer(amp="bfloat16" if bf16 else False, channels_last=layout)

        def step(network=network, optimizer=optimizer, inferer=inferer, name=name):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(inferer(x, network), y)
            loss.backward()
            optimizer.step()
            losses.setdefault(name, loss.item())

        steps[name] = step
    timings = interleaved(steps, repeats)
    rows = []
    for name in variants:
        rows.append(
            f"| {name} | {timings.wall(name):.3f} | {timings.ratio('fp32 (today)', name):.2f} | "
            f"{timings.ratio('fp32 (today)', name, 'cpu'):.2f} | {losses[name]:.4f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller batches, one round (a smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2, as in issue 19)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles for ~30 s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 7
    inference_batch, size, train_batch = (2, 128, 4) if args.quick else (8, 256, 32)
    inference = inference_rows(repeats, inference_batch, size, not args.no_compile)
    training = training_rows(repeats, train_batch)
    body = "\n".join(
        [
            f"Shipped hippocampus UNet (base 32, 5 → 3). {conditions()}. CPU with native bf16: "
            f"{cpu_supports_bf16()}. Medians of {repeats} interleaved round(s); speed-up = time(fp32) / time(variant) "
            "in the same round (wall clock and CPU time of the process).",
            "",
            f"Inference, batch {inference_batch} × 5 × {size} × {size}:",
            "",
            "| variant | median wall s | speed-up (wall) | speed-up (CPU) | max abs logit diff | labels changed (%) |",
            "|---|---|---|---|---|---|",
            *inference,
            "",
            f"Training step (forward, cross-entropy, backward, AdamW), batch {train_batch} × 5 × 48 × 64:",
            "",
            "| variant | median wall s | speed-up (wall) | speed-up (CPU) | first loss |",
            "|---|---|---|---|---|",
            *training,
        ]
    )
    print("\n" + body)
    if not args.quick:
        write_result("precision", "Mixed precision, channels_last and torch.compile on this CPU", body)


if __name__ == "__main__":
    main()
