"""Measure, on this machine, what one training step and one batch of inference windows cost, and turn a time
budget into epochs.

The budget decision needs the real cost of the planned network on the planned batch here (CPU threads, GPU), which
no formula gives: the network, the loss (``DiceCEBoundaryLoss`` with distance maps, as in training) and AdamW run a
few steps on random tensors of the planned shapes, after warm-up steps, and the median is kept. A few seconds.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch

from monai_unet2.bundle_config import build_network
from monai_unet2.losses import DiceCEBoundaryLoss

__all__ = ["budget_epochs", "measure_seconds"]

#: share of a training step spent outside the network (data sampling, augmentation, logging), measured on the
#: hippocampus bundle (55 min for 30 epochs of 40 steps with validation against the bare network's steps)
STEP_OVERHEAD = 1.2
#: validation may take at most this share of an epoch's training time; beyond it, validation runs every few epochs
VALIDATION_SHARE = 0.5
MIN_EPOCHS = 10
MAX_EPOCHS = 1000
MAX_EPOCH_LENGTH = 250


def _median_seconds(step: Any, repeats: int, warmup: int, device: torch.device) -> float:
    times = []
    for index in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def measure_seconds(
    network_spec: Mapping[str, Any],
    in_channels: int,
    num_classes: int,
    roi: list[int],
    batch: int,
    window_batch: int = 64,
    device: str | torch.device | None = None,
    repeats: int = 2,
) -> dict[str, Any]:
    """Seconds of one training step and of one network call on a batch of inference windows, on this machine.

    Args:
        network_spec: ``plans.json`` ``network``.
        in_channels: network input channels.
        num_classes: output channels.
        roi: the window.
        batch: slices per training step.
        window_batch: windows per inference call (``sw_batch_size``).
        device: where to measure; default CUDA when available.
        repeats: timed repetitions (after one warm-up).

    Returns:
        ``{"device", "threads", "train_step_seconds", "window_batch_seconds", "window_batch"}``.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = torch.Generator().manual_seed(0)
    network = build_network(network_spec, in_channels, num_classes).to(device)
    loss = DiceCEBoundaryLoss(softmax=True, to_onehot_y=True, include_background=False, lambda_boundary=0.01)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    images = torch.randn(batch, in_channels, *roi, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (batch, 1, *roi), generator=generator).float()
    target = torch.cat([labels, torch.randn(batch, num_classes - 1, *roi, generator=generator)], dim=1).to(device)
    amp = device.type == "cuda"

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            output = network(images)
        output = output[0] if isinstance(output, (list, tuple)) else output
        loss(output, target).backward()
        optimizer.step()

    network.train()
    train_seconds = _median_seconds(train_step, repeats, 1, device)
    windows = torch.randn(window_batch, in_channels, *roi, generator=generator).to(device)
    network.eval()

    def infer() -> None:
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            network(windows)

    window_seconds = _median_seconds(infer, repeats, 1, device)
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_step_seconds": round(train_seconds, 4),
        "window_batch": window_batch,
        "window_batch_seconds": round(window_seconds, 4),
    }


def budget_epochs(
    budget_minutes: float,
    step_seconds: float,
    validation_seconds: float,
    iterations_per_pass: int,
    fixed: Mapping[str, int] | None = None,
) -> tuple[dict[str, int], dict[str, str]]:
    """Epochs, iterations per epoch and the validation interval that fit the budget.

    An epoch is a fixed number of iterations: about one pass over the training volumes (one batch each), at most
    250 (nnU-Net's epoch). The epochs are as many as the budget allows with validation included; validation runs
    every epoch unless it would take more than half an epoch's training time, then every few epochs. When fewer
    than 10 epochs would fit, epochs are shortened to give 10 (a learning-rate schedule and a best-checkpoint
    choice need several points). Values set by hand (``fixed``) are kept and the others planned around them.

    Args:
        budget_minutes: wall time for one fold's training.
        step_seconds: one training step, measured, including data handling.
        validation_seconds: one validation pass over a fold's validation cases, estimated.
        iterations_per_pass: steps for one batch per training volume.
        fixed: ``max_epochs``, ``epoch_length`` or ``val_interval`` set by ``--override``.

    Returns:
        ``({"max_epochs", "epoch_length", "val_interval"}, reasons)``.
    """
    fixed = dict(fixed or {})
    budget = budget_minutes * 60.0
    epoch_length = int(fixed.get("epoch_length") or min(MAX_EPOCH_LENGTH, max(1, iterations_per_pass)))

    def interval_for(length: int) -> int:
        automatic = max(1, math.ceil(validation_seconds / (VALIDATION_SHARE * length * step_seconds)))
        return int(fixed.get("val_interval") or automatic)

    def epochs_for(length: int, interval: int) -> int:
        return int(budget // (length * step_seconds + validation_seconds / interval))

    interval = interval_for(epoch_length)
    epochs = epochs_for(epoch_length, interval)
    shortened = False
    if epochs < MIN_EPOCHS and epoch_length > 1 and "epoch_length" not in fixed and "max_epochs" not in fixed:
        per_epoch = budget / MIN_EPOCHS - validation_seconds / interval
        epoch_length = max(1, int(per_epoch // step_seconds))
        interval = interval_for(epoch_length)
        epochs = epochs_for(epoch_length, interval)
        shortened = True
    epochs = int(min(MAX_EPOCHS, max(1, epochs)))
    total = epochs * (epoch_length * step_seconds + validation_seconds / interval) / 60.0
    reasons = {
        "epoch_length": (
            f"{epoch_length} iterations: "
            + (
                f"shortened from one batch per training volume so that {MIN_EPOCHS} epochs fit the budget"
                if shortened
                else f"about one batch per training volume, at most {MAX_EPOCH_LENGTH}"
            )
        ),
        "max_epochs": (
            f"{epochs} epochs of {epoch_length} steps at {step_seconds:.3g} s per step (measured here, with "
            f"{STEP_OVERHEAD:g} x for data handling) and {validation_seconds:.3g} s per validation take about "
            f"{total:.3g} min of the {budget_minutes:g} min budget"
        ),
        "val_interval": (
            "validation every epoch (it costs less than half an epoch's training)"
            if interval == 1
            else f"validation every {interval} epochs, so that it takes at most half as long as the training"
        ),
    }
    return {"max_epochs": epochs, "epoch_length": epoch_length, "val_interval": interval}, reasons
