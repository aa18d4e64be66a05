"""nnU-Net v2 trainers for ``benchmarks/vs_nnunet.py``: nnU-Net's default trainer on a wall-clock budget.

nnU-Net's default trainer runs 1000 epochs of 250 iterations with a poly learning-rate schedule over those epochs,
about a day on a GPU. To compare at equal wall time on this CPU the harness keeps everything of nnU-Net's default
(network, plans, augmentation, loss, optimiser, iterations per epoch, poly schedule) and changes only how many epochs
the schedule spans, chosen from a measured epoch time so that the whole schedule fits the budget. nnU-Net's own
``nnUNetTrainer_<N>epochs`` variants do the same for fixed N; these classes allow any N.

The classes only set attributes and time epochs around nnU-Net's hooks; they contain no nnU-Net code. They are
found by nnU-Net's trainer search through ``nnUNet_extTrainer`` (this folder) and read their settings from the
environment, as the search constructs them with nnU-Net's fixed signature:

- ``VS_NNUNET_EPOCHS``: epochs of the schedule (:class:`nnUNetTrainerBudget`).
- ``VS_NNUNET_ITERATIONS``: training iterations per epoch (default nnU-Net's 250); validation iterations keep
  nnU-Net's 1:5 ratio.
- ``VS_NNUNET_STOP_AFTER_S``: a hard stop in seconds of training (0: none), counted on ``VS_NNUNET_STOP_CLOCK``
  (``cpu``: this process's CPU time, the default; ``wall``). Past it the trainer raises :class:`WallClockExhausted`
  at the end of an epoch; the driver then writes the final checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

__all__ = ["WallClockExhausted", "nnUNetTrainerBudget", "nnUNetTrainerBudgetProbe"]

DEFAULT_ITERATIONS = 250
VALIDATION_RATIO = 5
EPOCH_TIMES_FILE = "vs_nnunet_epoch_seconds.json"
CPU = torch.device("cpu")


class WallClockExhausted(RuntimeError):
    """Raised at the end of an epoch when the training time exceeds ``VS_NNUNET_STOP_AFTER_S``."""


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise RuntimeError(f"{name} is not set: run nnU-Net through benchmarks/vs_nnunet.py")
        return default
    return int(value)


class nnUNetTrainerBudget(nnUNetTrainer):
    """nnU-Net's default trainer with ``VS_NNUNET_EPOCHS`` epochs, a checkpoint after every epoch (so a killed run
    resumes with ``--c`` semantics losing at most one epoch) and the wall time of every epoch recorded in
    ``vs_nnunet_epoch_seconds.json`` beside the checkpoints (epoch start to the end of nnU-Net's epoch-end work:
    logging, checkpoints, progress plot), with the CPU seconds of this process (data augmentation included when
    ``nnUNet_n_proc_DA=0``): on a shared machine their ratio shows how much of a core the run had.

    Args:
        plans: nnU-Net plans (``nnUNetPlans.json``).
        configuration: ``"2d"`` or ``"3d_fullres"``.
        fold: the fold of ``splits_final.json``.
        dataset_json: nnU-Net's ``dataset.json``.
        device: the torch device.
    """

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = CPU
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int("VS_NNUNET_EPOCHS")
        self.num_iterations_per_epoch = _env_int("VS_NNUNET_ITERATIONS", DEFAULT_ITERATIONS)
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // VALIDATION_RATIO)
        self.save_every = 1
        self.stop_after_s = float(os.environ.get("VS_NNUNET_STOP_AFTER_S", "0"))
        self.stop_clock = os.environ.get("VS_NNUNET_STOP_CLOCK", "cpu")
        self._epoch_started = self._epoch_cpu_started = 0.0

    @property
    def epoch_times_path(self) -> Path:
        return Path(self.output_folder) / EPOCH_TIMES_FILE

    def epoch_record(self) -> dict[str, list[float]]:
        """Wall and CPU seconds of each epoch trained so far, and the wall seconds of its end-of-epoch work
        (logging, checkpoints, plot), across resumed runs (an epoch a killed run did not checkpoint is dropped: it runs again)."""
        record = {"epoch_seconds": [], "epoch_cpu_seconds": [], "epoch_end_seconds": [], "epoch_end_cpu_seconds": []}
        if self.epoch_times_path.is_file():
            stored = json.loads(self.epoch_times_path.read_text())
            record = {key: stored.get(key, [])[: self.current_epoch] for key in record}
        return record

    def on_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()
        self._epoch_cpu_started = time.process_time()
        super().on_epoch_start()

    def on_epoch_end(self) -> None:
        record = self.epoch_record()
        end_started, end_cpu_started = time.perf_counter(), time.process_time()
        super().on_epoch_end()
        finished, finished_cpu = time.perf_counter(), time.process_time()
        record["epoch_seconds"].append(finished - self._epoch_started)
        record["epoch_cpu_seconds"].append(finished_cpu - self._epoch_cpu_started)
        record["epoch_end_seconds"].append(finished - end_started)
        record["epoch_end_cpu_seconds"].append(finished_cpu - end_cpu_started)
        seconds = record["epoch_cpu_seconds" if self.stop_clock == "cpu" else "epoch_seconds"]
        record.update(num_epochs=self.num_epochs, iterations=self.num_iterations_per_epoch)
        partial = self.epoch_times_path.with_suffix(".tmp")
        partial.write_text(json.dumps(record))
        partial.replace(self.epoch_times_path)
        if self.stop_after_s > 0 and self.current_epoch < self.num_epochs and sum(seconds) >= self.stop_after_s:
            raise WallClockExhausted(
                f"{sum(seconds):.0f} {self.stop_clock} seconds of training after epoch {self.current_epoch} of {self.num_epochs}, "
                f"past the hard stop of {self.stop_after_s:.0f} s"
            )


class nnUNetTrainerBudgetProbe(nnUNetTrainerBudget):
    """Measures nnU-Net's epoch time: two short epochs of ``VS_NNUNET_ITERATIONS`` iterations (the first warms up),
    with everything else as :class:`nnUNetTrainerBudget` (checkpoints included). Its own output folder, never used
    for prediction.

    Args:
        plans: nnU-Net plans (``nnUNetPlans.json``).
        configuration: ``"2d"`` or ``"3d_fullres"``.
        fold: the fold of ``splits_final.json``.
        dataset_json: nnU-Net's ``dataset.json``.
        device: the torch device.
    """

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = CPU
    ) -> None:
        os.environ.setdefault("VS_NNUNET_EPOCHS", "2")
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.stop_after_s = 0.0
