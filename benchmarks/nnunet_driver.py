"""Runs nnU-Net v2 inside ``.venv-nnunet`` for ``benchmarks/vs_nnunet.py``: probe, train, predict.

Called by the harness, not by hand: it sets ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``,
``nnUNet_extTrainer`` (``benchmarks/nnunet_trainers``), ``nnUNet_n_proc_DA`` and the trainer's ``VS_NNUNET_*``
settings. The driver goes through nnU-Net's own functions (``get_trainer_from_args``, ``maybe_load_checkpoint``,
``nnUNetTrainer.run_training``, ``nnUNetPredictor``) and differs from ``nnUNetv2_train -device cpu`` /
``nnUNetv2_predict`` only where a fixed thread budget needs it:

- ``nnUNetv2_train -device cpu`` sets torch to one thread per core of the machine; this driver sets ``--threads``.
- nnU-Net's validation after training (``perform_actual_validation``) is skipped: the harness predicts the same
  cases itself, timed, with and without test-time mirroring.
- ``nnUNetv2_predict`` runs preprocessing and export in worker processes; this driver predicts one case after the
  other in this process (``predict_from_files_sequential``), so the seconds per volume are those of ``--threads``.

The trainer search of nnU-Net imports every module under ``nnunetv2.training.nnUNetTrainer``. Its Primus trainers
import ``timm``, which needs torchvision, of which only CUDA builds exist on the indexes (see
``benchmarks/nnunet_requirements.txt``); an empty module stands in for them so that the search passes them over.

Usage (by the harness): ``python benchmarks/nnunet_driver.py {probe,train,predict} --configuration 2d ...``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

DATASET = "Dataset004_Hippocampus"
PRIMUS_MODULE = "nnunetv2.training.nnUNetTrainer.primus.primus_trainers"


def set_threads(threads: int) -> None:
    """Fix torch's intra-op threads to ``threads`` and inter-op threads to one, before any torch work.

    Args:
        threads: torch intra-op threads.
    """
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def skip_transformer_trainers() -> None:
    """Let nnU-Net's trainer search pass over the Primus trainers when ``timm`` is not installed."""
    if importlib.util.find_spec("timm") is None:
        sys.modules.setdefault(PRIMUS_MODULE, types.ModuleType(PRIMUS_MODULE))


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (a killed run never leaves half a file)."""
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(json.dumps(payload, indent=2))
    partial.replace(path)


def train(configuration: str, trainer_name: str, resume: bool, summary: Path) -> None:
    """Train fold 0 of ``configuration`` with nnU-Net's own entry functions and write a summary JSON.

    Args:
        configuration: ``"2d"`` or ``"3d_fullres"``.
        trainer_name: ``nnUNetTrainerBudget`` (training) or ``nnUNetTrainerBudgetProbe`` (epoch-time probe).
        resume: continue from the latest checkpoint (nnU-Net's ``--c``); starts afresh when there is none, and
            only writes the summary when the final checkpoint exists.
        summary: where to write epochs, seconds and whether the hard stop ended the run.
    """
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from vs_nnunet_trainers import WallClockExhausted

    started = time.perf_counter()
    trainer = get_trainer_from_args(
        DATASET, configuration, 0, trainer_name, "nnUNetPlans", resume, device=torch.device("cpu")
    )
    finished = resume and (Path(trainer.output_folder) / "checkpoint_final.pth").is_file()
    maybe_load_checkpoint(trainer, resume, False)
    first_epoch = trainer.current_epoch
    stopped_early = False
    if finished:  # nothing to train: only the summary was missing (a run killed right after training)
        stopped_early = trainer.current_epoch < trainer.num_epochs
    else:
        try:
            trainer.run_training()
        except WallClockExhausted as stop:
            stopped_early = True
            trainer.print_to_log_file(f"vs_nnunet: {stop}; writing checkpoint_final.pth")
            trainer.on_train_end()
    record = trainer.epoch_record()
    write_json(
        summary,
        {
            "configuration": configuration,
            "trainer": trainer_name,
            "num_epochs": trainer.num_epochs,
            "epochs_done": trainer.current_epoch,
            "first_epoch_this_run": first_epoch,
            "iterations_per_epoch": trainer.num_iterations_per_epoch,
            "val_iterations_per_epoch": trainer.num_val_iterations_per_epoch,
            "batch_size": trainer.batch_size,
            "patch_size": list(trainer.configuration_manager.patch_size),
            "epoch_seconds": record["epoch_seconds"],
            "epoch_end_seconds": record["epoch_end_seconds"],
            "epoch_cpu_seconds": record["epoch_cpu_seconds"],
            "epoch_end_cpu_seconds": record["epoch_end_cpu_seconds"],
            "stop_clock": trainer.stop_clock,
            "train_seconds": sum(record["epoch_seconds"]),
            "wall_seconds_this_run": time.perf_counter() - started,
            "stopped_early": stopped_early,
            "threads": torch.get_num_threads(),
            "output_folder": trainer.output_folder,
        },
    )


def predict(
    model_dir: Path, cases: list[list[str]], output_dir: Path, mirroring: bool, checkpoint: str, timings: Path
) -> None:
    """Predict ``cases`` one after the other with fold 0 and record the seconds of each.

    Cases whose prediction exists are skipped (a killed run continues); their earlier seconds are kept.

    Args:
        model_dir: nnU-Net's ``<trainer>__<plans>__<configuration>`` folder.
        cases: ``[case_id, image_path]`` pairs.
        output_dir: where ``<case_id>.nii.gz`` go.
        mirroring: nnU-Net's test-time mirroring (its default; ``--disable_tta`` turns it off).
        checkpoint: checkpoint file name in ``fold_0``.
        timings: JSON of ``{case_id: seconds}``, updated after every case.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    output_dir.mkdir(parents=True, exist_ok=True)
    seconds = json.loads(timings.read_text()) if timings.is_file() else {}
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,), checkpoint_name=checkpoint)
    for case_id, image in cases:
        target = output_dir / f"{case_id}.nii.gz"
        if target.is_file() and case_id in seconds:
            continue
        started = time.perf_counter()
        predictor.predict_from_files_sequential([[image]], [str(output_dir / case_id)], save_probabilities=False)
        seconds[case_id] = time.perf_counter() - started
        write_json(timings, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["probe", "train", "predict"])
    parser.add_argument("--configuration", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="train: continue from the latest checkpoint")
    parser.add_argument("--summary", type=Path, help="probe/train: summary JSON to write")
    parser.add_argument("--model-dir", type=Path, help="predict: nnU-Net's trained model folder")
    parser.add_argument("--cases", type=Path, help="predict: JSON list of [case_id, image_path]")
    parser.add_argument("--output-dir", type=Path, help="predict: output folder")
    parser.add_argument("--disable-tta", action="store_true", help="predict: no test-time mirroring")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth", help="predict: checkpoint in fold_0")
    parser.add_argument("--timings", type=Path, help="predict: JSON of seconds per case")
    args = parser.parse_args()

    set_threads(args.threads)
    skip_transformer_trainers()
    sys.path.insert(0, os.environ["nnUNet_extTrainer"])  # noqa: SIM112 (nnU-Net's name)
    if args.action in ("probe", "train"):
        trainer = "nnUNetTrainerBudgetProbe" if args.action == "probe" else "nnUNetTrainerBudget"
        train(args.configuration, trainer, args.resume and args.action == "train", args.summary)
    else:
        cases = json.loads(args.cases.read_text())
        predict(args.model_dir, cases, args.output_dir, not args.disable_tta, args.checkpoint, args.timings)


if __name__ == "__main__":
    main()
