"""Side by side with nnU-Net v2 on our hippocampus split, at an equal training budget on this machine.

Run (from the repository root, in our ``.venv``)::

    .venv/bin/python benchmarks/vs_nnunet.py --budget-minutes 150 [--jobs 2] [--ours-budget "150 min, 1 thread"]

One command, resumable (run it again after a kill: finished steps are skipped, training continues from its latest
checkpoint as nnU-Net's ``--c`` does, prediction from the first missing case):

1. ``benchmarks/nnunet_env.sh`` creates ``.venv-nnunet`` (nnunetv2 beside the local CPU torch 2.13.0) if missing.
2. Our 200 MSD cases in nnU-Net's raw format, ``splits_final.json`` fold 0 = our training 160 / validation 40
   (``benchmarks/nnunet_dataset.py``), then ``nnUNetv2_plan_and_preprocess`` for ``2d`` and ``3d_fullres``.
3. Per configuration: a probe measures nnU-Net's epoch time here (two short epochs; the second, scaled to the
   epoch length, plus its end-of-epoch work); the training then runs nnU-Net's default trainer with as many
   epochs as fit the budget, its poly schedule spanning exactly those (``benchmarks/nnunet_trainers``). The budget
   counts the training process's CPU time (``--clock cpu``, the default: the wall time of a free core, unmoved by
   other jobs on a shared machine) or its wall time (``--clock wall``). Each run has ``--threads`` torch threads and ``--da-workers`` augmentation processes (default 1 and 0: one core per run,
   augmentation in the training process, as our bundle trains with ``num_workers 0``). A hard stop at
   ``--stop-factor`` x budget ends a run that the machine slowed down; the table says so.
4. nnU-Net predicts the validation cases with fold 0's final checkpoint, with its default test-time mirroring and
   without (``--disable_tta``), one case after the other, timed per case.
5. Dice per class with our evaluation path for nnU-Net's files; our bundle's ``evaluate.json`` on the same cases;
   our ``inference.json`` on the same images, timed the same way. One table, printed and written to
   ``benchmarks/results/vs_nnunet.md``.

Everything downloaded or created goes to ``.venv-nnunet`` and ``--work-dir`` (default ``runs/vs_nnunet``), both
git-ignored; the log is ``<work-dir>/vs_nnunet.log``, each nnU-Net step's output ``<work-dir>/logs/``.
A smoke run of the whole path: ``--budget-minutes 3 --iterations-per-epoch 2 --probe-iterations 2 --max-cases 2
--work-dir runs/vs_nnunet_smoke --results runs/vs_nnunet_smoke/vs_nnunet.md`` (its table says it is a smoke run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
sys.path.insert(0, str(REPO))

import nnunet_dataset  # noqa: E402
import nnunet_scoring  # noqa: E402

from monai_unet2.data import msd_datalist  # noqa: E402

LOG = logging.getLogger("vs_nnunet")
CONFIGURATIONS = ("2d", "3d_fullres")
NNUNET_ITERATIONS = 250
FULL_VALIDATION = 40


class Harness:
    """The steps of the comparison, each skipped when its output exists.

    Args:
        args: the parsed command line.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.work_dir.resolve()
        self.venv_python = REPO / args.nnunet_venv / "bin" / "python"  # not resolved: a venv python is a symlink
        self.raw = self.work / "nnUNet_raw"
        self.preprocessed = self.work / "nnUNet_preprocessed"
        self.results = self.work / "nnUNet_results"
        self.validation = msd_datalist(args.dataset_dir, "validation", nnunet_dataset.VALIDATION_EVERY)
        if args.max_cases:
            self.validation = self.validation[: args.max_cases]

    def nnunet_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment of every nnU-Net process: its folders, thread counts, our trainers."""
        threads = str(self.args.threads)
        env = dict(os.environ)
        env.update(
            nnUNet_raw=str(self.raw),
            nnUNet_preprocessed=str(self.preprocessed),
            nnUNet_results=str(self.results),
            nnUNet_extTrainer=str(BENCHMARKS / "nnunet_trainers"),
            nnUNet_n_proc_DA=str(self.args.da_workers),
            nnUNet_def_n_proc="1",
            OMP_NUM_THREADS=threads,
            MKL_NUM_THREADS=threads,
            OPENBLAS_NUM_THREADS=threads,
            PYTHONUNBUFFERED="1",
        )
        env.update(extra or {})
        return env

    def run_logged(self, command: list[str], log_name: str, extra_env: dict[str, str] | None = None) -> None:
        """Run ``command`` with nnU-Net's environment, appending its output to ``logs/<log_name>.log``."""
        log_path = self.work / "logs" / f"{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        LOG.info("running %s (output: %s)", " ".join(command), log_path)
        with open(log_path, "a") as log_file:
            log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
            log_file.flush()
            done = subprocess.run(command, env=self.nnunet_env(extra_env), stdout=log_file, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} ... failed with exit code {done.returncode}; see {log_path}")

    def driver(self, *arguments: str, log_name: str, extra_env: dict[str, str] | None = None) -> None:
        command = [str(self.venv_python), str(BENCHMARKS / "nnunet_driver.py"), *arguments]
        self.run_logged([*command, "--threads", str(self.args.threads)], log_name, extra_env)

    def ensure_env(self) -> None:
        """Create ``.venv-nnunet`` unless it already imports nnU-Net with the CPU torch."""
        check = "import nnunetv2.training.nnUNetTrainer.nnUNetTrainer, torch; assert torch.version.cuda is None"
        if self.venv_python.is_file() and subprocess.run([str(self.venv_python), "-c", check]).returncode == 0:
            return
        LOG.info("creating %s", self.args.nnunet_venv)
        env = dict(os.environ, NNUNET_VENV=str(self.args.nnunet_venv))
        subprocess.run([str(BENCHMARKS / "nnunet_env.sh")], env=env, check=True, cwd=REPO)

    def prepare(self) -> None:
        """Raw dataset, planning and preprocessing (once), then ``splits_final.json`` (checked every run)."""
        nnunet_dataset.convert(self.args.dataset_dir, self.raw)
        done = self.work / "plan_and_preprocess.done"
        if not done.is_file():
            command = [str(self.venv_python.parent / "nnUNetv2_plan_and_preprocess"), "-d", "4"]
            command += ["--verify_dataset_integrity", "--no_pbar", "-c", *CONFIGURATIONS, "-np", "1", "1"]
            # the planner sets torch's threads to nnUNet_n_proc_DA while it estimates memory: 0 is refused there
            self.run_logged([*command, "-npfp", "1"], "plan_and_preprocess", {"nnUNet_n_proc_DA": "1"})
            done.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
        LOG.info("splits: %s", nnunet_dataset.write_splits(self.args.dataset_dir, self.preprocessed))

    def state_path(self, configuration: str) -> Path:
        return self.work / "state" / f"{configuration}.json"

    def plan_epochs(self, configuration: str) -> dict:
        """Probe the epoch time (once) and choose the number of epochs that fits the budget."""
        path = self.state_path(configuration)
        path.parent.mkdir(parents=True, exist_ok=True)
        iterations = self.args.iterations_per_epoch
        state = json.loads(path.read_text()) if path.is_file() else {}
        wanted = {"budget_minutes": self.args.budget_minutes, "clock": self.args.clock, "iterations": iterations}
        held = {key: state.get(key, value) for key, value in wanted.items()}
        if held != wanted:
            raise SystemExit(f"{path} holds a run with {held}, not {wanted}: use another --work-dir (or delete it)")
        if "probe" not in state:
            probe = self.work / "state" / f"{configuration}_probe.json"
            self.driver(
                "probe", "--configuration", configuration, "--summary", str(probe),
                log_name=f"{configuration}_probe",
                extra_env={"VS_NNUNET_ITERATIONS": str(self.args.probe_iterations)},
            )  # fmt: skip
            state["probe"] = json.loads(probe.read_text())
        estimates = {clock: self.estimate_epoch(state["probe"], clock, iterations) for clock in ("cpu", "wall")}
        fitted = max(1, int(self.args.budget_minutes * 60 // estimates[self.args.clock]))
        epochs = self.args.epochs or state.get("epochs", fitted)
        if state.get("epochs", epochs) != epochs:
            raise SystemExit(f"{path}: this run was planned with {state['epochs']} epochs, not {epochs}")
        state.update(wanted, estimated_epoch_seconds=estimates, epochs_fitting_budget=fitted, epochs=epochs)
        path.write_text(json.dumps(state, indent=2))
        LOG.info(
            "%s: an epoch of %d iterations takes ~%.0f CPU s, ~%.0f wall s here -> %d epochs in %g %s minutes",
            configuration, iterations, estimates["cpu"], estimates["wall"], epochs, self.args.budget_minutes,
            self.args.clock,
        )  # fmt: skip
        return state

    @staticmethod
    def estimate_epoch(probe: dict, clock: str, iterations: int) -> float:
        """Seconds of an epoch of ``iterations`` on ``clock`` ("cpu" or "wall") from the probe's second epoch: its
        iterations scaled to ``iterations``, its end-of-epoch work (logging, checkpoints, plot) as measured."""
        total = probe["epoch_cpu_seconds" if clock == "cpu" else "epoch_seconds"][-1]
        end_work = probe["epoch_end_cpu_seconds" if clock == "cpu" else "epoch_end_seconds"][-1]
        return end_work + (total - end_work) * iterations / probe["iterations_per_epoch"]

    def model_dir(self, configuration: str) -> Path:
        return self.results / nnunet_dataset.DATASET / f"nnUNetTrainerBudget__nnUNetPlans__{configuration}"

    def train(self, configuration: str, state: dict) -> dict:
        """Train (or continue) fold 0 with the planned epochs; skipped when the final checkpoint exists."""
        summary = self.work / "state" / f"{configuration}_train.json"
        final = self.model_dir(configuration) / "fold_0" / "checkpoint_final.pth"
        if final.is_file() and summary.is_file():
            return json.loads(summary.read_text())
        stop_s = self.args.stop_factor * self.args.budget_minutes * 60
        self.driver(
            "train", "--configuration", configuration, "--summary", str(summary), "--resume",
            log_name=f"{configuration}_train",
            extra_env={
                "VS_NNUNET_EPOCHS": str(state["epochs"]),
                "VS_NNUNET_ITERATIONS": str(state["iterations"]),
                "VS_NNUNET_STOP_AFTER_S": str(stop_s),
                "VS_NNUNET_STOP_CLOCK": state["clock"],
            },
        )  # fmt: skip
        return json.loads(summary.read_text())

    def predict(self, configuration: str, mirroring: bool) -> dict[str, float]:
        """Predict the validation cases (missing ones only) and return the seconds per case."""
        tag = f"{configuration}_{'tta' if mirroring else 'notta'}"
        output = self.work / "predictions" / tag
        output.mkdir(parents=True, exist_ok=True)
        cases = output / "cases.json"
        images = self.raw / nnunet_dataset.DATASET / "imagesTr"
        names = [nnunet_dataset.case_id(case["image"]) for case in self.validation]
        cases.write_text(json.dumps([[name, str(images / f"{name}_0000.nii.gz")] for name in names]))
        timings = output / "seconds.json"
        arguments = ["predict", "--configuration", configuration, "--model-dir", str(self.model_dir(configuration))]
        arguments += ["--cases", str(cases), "--output-dir", str(output), "--timings", str(timings)]
        self.driver(*arguments, *([] if mirroring else ["--disable-tta"]), log_name=f"predict_{tag}")
        seconds = json.loads(timings.read_text())
        return {name: seconds[name] for name in names if name in seconds}

    def configuration_rows(self, configuration: str) -> list[dict]:
        """Probe, train, predict and score one nnU-Net configuration."""
        state = self.plan_epochs(configuration)
        trained = self.train(configuration, state)
        budget = self.budget_text(state, trained)
        rows = []
        for mirroring in (True, False):
            seconds = self.predict(configuration, mirroring)
            output = self.work / "predictions" / f"{configuration}_{'tta' if mirroring else 'notta'}"
            scores = nnunet_scoring.score_predictions(self.args.bundle_dir, self.validation, output)
            missing = len(self.validation) - len(seconds)
            label = (
                configuration + ("" if mirroring else ", --disable_tta") + (f", {missing} missing" if missing else "")
            )
            rows.append(
                {"method": "nnU-Net v2 (fold 0)", "configuration": label, "budget": budget, "scores": scores,
                 "dice": nnunet_scoring.mean_scores(scores), "seconds": _mean(seconds.values())}
            )  # fmt: skip
        return rows

    def budget_text(self, state: dict, trained: dict) -> str:
        """The budget cell: budget and its clock, epochs done / planned x iterations, measured wall and CPU minutes."""
        text = (
            f"{self.args.budget_minutes:g} min ({state['clock']}): {trained['epochs_done']}/{trained['num_epochs']} "
            f"epochs x {trained['iterations_per_epoch']} it; wall {_minutes(trained['train_seconds'])} min, "
            f"CPU {_minutes(sum(trained['epoch_cpu_seconds']))} min"
        )
        return text + (", hard stop" if trained["stopped_early"] else "")

    def ours_row(self) -> dict:
        """Our bundle on the same cases: ``evaluate.json`` Dice, ``inference.json`` seconds per volume."""
        bundle, ckpt = self.args.bundle_dir, self.args.ckpt or self.args.bundle_dir / "models" / "model.pt"
        ours = self.work / "ours"
        scores = nnunet_scoring.evaluate_bundle(bundle, ckpt, self.validation, ours / "evaluation")
        seconds = nnunet_scoring.infer_bundle(bundle, ckpt, self.validation, ours / "inference")
        rescored = nnunet_scoring.score_predictions(bundle, self.validation, ours / "inference" / "predictions")
        gap = max(abs(a - b) for name in scores for a, b in zip(scores[name], rescored[name]))
        LOG.info("ours: evaluate.json vs the same Dice on inference.json's files: largest per-case gap %.2e", gap)
        return {
            "method": f"monai_unet2 {bundle.name}", "configuration": "bundle as shipped (no TTA)",
            "budget": self.args.ours_budget, "scores": scores, "dice": nnunet_scoring.mean_scores(scores),
            "seconds": _mean(seconds.values()), "rescoring_gap": gap,
        }  # fmt: skip

    def run(self) -> list[dict]:
        torch.set_num_threads(self.args.threads)
        self.work.mkdir(parents=True, exist_ok=True)
        self.ensure_env()
        self.prepare()
        with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            futures = [pool.submit(self.configuration_rows, name) for name in self.args.configurations]
            nnunet_rows = [row for future in futures for row in future.result()]
        return [self.ours_row(), *nnunet_rows]


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f}" if seconds >= 600 else f"{seconds / 60:.1f}"


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def report(args: argparse.Namespace, rows: list[dict], harness: Harness) -> str:
    """The markdown written to ``--results``: conditions, the table, per-case scores in the work folder."""
    n_cases = len(harness.validation)
    smoke = n_cases < FULL_VALIDATION or args.iterations_per_epoch != NNUNET_ITERATIONS
    version = subprocess.run(
        [str(harness.venv_python), "-c", "import importlib.metadata as m; print(m.version('nnunetv2'))"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    lines = ["# Side by side with nnU-Net v2", ""]
    if smoke:
        lines += [
            f"**Smoke run** ({n_cases} cases, {args.iterations_per_epoch} iterations per epoch, budget "
            f"{args.budget_minutes:g} min): it checks the pipeline end to end; its numbers compare nothing.",
            "",
        ]
    lines += [
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/vs_nnunet.py', *sys.argv[1:]])}`",
        "",
        f"Conditions: {n_cases} validation cases of our split (sorted names, every 5th); nnunetv2 {version}, "
        f"torch {torch.__version__}, CPU, {args.threads} torch thread(s) per run, nnUNet_n_proc_DA={args.da_workers}, "
        f"{args.jobs} run(s) at a time; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. "
        "Dice: our evaluation path (bundle preprocessing, MONAI DiceMetric per case without background, mean over "
        "cases; a missing prediction scores 0). nnU-Net: fold 0 only (its default ensembles 5 folds), "
        "checkpoint_final, no postprocessing, predicted in one process one case at a time; 'wall' is the wall "
        "time of its epochs, 'CPU' the CPU time of its process (on a free core the two agree). Seconds per volume: files in, label file out, "
        "model loaded beforehand, mean over the cases.",
        "",
        nnunet_scoring.markdown_table(rows),
        "",
        f"Per-case Dice: `{_shown(harness.work / 'scores.json')}`; logs: `{_shown(harness.work / 'logs')}`.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, required=True, help="training wall time per configuration")
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=CONFIGURATIONS)
    parser.add_argument("--dataset-dir", type=Path, default=REPO.parent / "shared" / "data" / "msd_hippocampus")
    parser.add_argument("--bundle-dir", type=Path, default=REPO / "bundles" / "hippocampus_unet25d_segmentation")
    parser.add_argument("--ckpt", type=Path, default=None, help="our weights (default <bundle-dir>/models/model.pt)")
    parser.add_argument("--ours-budget", default="shipped model.pt (training in the bundle README)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "vs_nnunet")
    parser.add_argument("--nnunet-venv", type=Path, default=Path(".venv-nnunet"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each nnU-Net run and of ours")
    parser.add_argument("--da-workers", type=int, default=0, help="nnUNet_n_proc_DA (0: in the training process)")
    parser.add_argument("--jobs", type=int, default=1, help="configurations trained at the same time")
    parser.add_argument("--iterations-per-epoch", type=int, default=NNUNET_ITERATIONS)
    parser.add_argument("--probe-iterations", type=int, default=10, help="iterations of each probe epoch")
    parser.add_argument("--epochs", type=int, default=0, help="override the epochs chosen from the probe")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="what the budget counts: the training process's CPU time (default: steady on a shared machine, the "
        "wall time on a free core) or wall time",
    )
    parser.add_argument("--stop-factor", type=float, default=1.25, help="hard stop at this x budget (0: none)")
    parser.add_argument("--max-cases", type=int, default=0, help="predict only the first N validation cases")
    parser.add_argument("--results", type=Path, default=BENCHMARKS / "results" / "vs_nnunet.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(args.work_dir / "vs_nnunet.log")],
    )
    harness = Harness(args)
    rows = harness.run()
    scores = {f"{row['method']} | {row['configuration']}": row["scores"] for row in rows}
    (harness.work / "scores.json").write_text(json.dumps(scores, indent=2))
    text = report(args, rows, harness)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
