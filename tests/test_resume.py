"""Interrupted training: SIGKILL mid-epoch, ``--resume True``, and checkpoints that a kill cannot corrupt."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from ignite.engine import Engine, Events

from monai_unet2.handlers import AtomicCheckpointSaver, TrainingStateError, TrainingStateLoader

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
MAX_EPOCHS = 3


def train_command(folder: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(BUNDLE / "configs" / "train.json"),
        "--bundle_root",
        str(BUNDLE),
        "--meta_file",
        str(BUNDLE / "configs" / "metadata.json"),
        "--ckpt_dir",
        str(folder / "models"),
        "--output_dir",
        str(folder / "eval"),
        "--max_epochs",
        str(MAX_EPOCHS),
        "--epoch_length",
        "3",
        "--slices_per_volume",
        "2",
        *extra,
    ]


ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")


def run_to_the_end(folder: Path, *extra: str) -> str:
    result = subprocess.run(
        train_command(folder, *extra), cwd=folder, env=ENV, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def kill_when(folder: Path, marker: str) -> str:
    """Start a training and SIGKILL it (by its pid) as soon as ``marker`` appears in its log."""
    log_path = folder / "killed.log"
    with open(log_path, "w") as log:
        # per-iteration log lines instead of the progress bar give a reliable kill point
        process = subprocess.Popen(
            train_command(folder, "--progress_bar", "False"), cwd=folder, env=ENV, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 600
        try:
            while marker not in log_path.read_text():
                assert process.poll() is None, f"training ended before '{marker}':\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "timed out waiting for the training to reach the kill point"
                time.sleep(0.05)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    return log_path.read_text()


def training_state(folder: Path) -> dict:
    return torch.load(folder / "models" / "fold_0" / "training_state.pt", weights_only=True)


def only_run(folder: Path):
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'eval' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("hippocampus_unet25d_segmentation")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [run.info.run_name for run in runs]
    return client, runs[0]


@pytest.mark.integration
@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_continues_the_same_run(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    reference.mkdir(), interrupted.mkdir()
    run_to_the_end(reference)
    expected = training_state(reference)
    epoch_length = expected["trainer"]["epoch_length"]
    assert expected["trainer"]["iteration"] == MAX_EPOCHS * epoch_length

    # killed in the middle of epoch 2, after epoch 1's state was saved
    log = kill_when(interrupted, f"Epoch: 2/{MAX_EPOCHS}, Iter: 2/{epoch_length}")
    assert "saved the training state of epoch 1" in log and "saved the training state of epoch 2" not in log
    killed = training_state(interrupted)
    assert killed["trainer"]["iteration"] == epoch_length
    assert torch.load(interrupted / "models" / "model.pt", weights_only=True).keys() == expected["network"].keys()
    _, run = only_run(interrupted)
    assert run.info.status == "RUNNING"  # left behind by the dead process

    output = run_to_the_end(interrupted, "--resume", "True")
    assert f"epoch 1 of {MAX_EPOCHS} done, continuing with epoch 2" in output
    resumed = training_state(interrupted)
    # the final checkpoint matches the uninterrupted one in epoch count, optimiser steps and schedule
    assert resumed["trainer"] == expected["trainer"]
    adam_steps = {float(state["step"]) for state in resumed["optimizer"]["state"].values()}
    assert adam_steps == {float(MAX_EPOCHS * epoch_length)}
    assert resumed["lr_scheduler"]["last_epoch"] == expected["lr_scheduler"]["last_epoch"] == MAX_EPOCHS
    assert resumed["network"].keys() == expected["network"].keys()
    model = torch.load(interrupted / "models" / "model.pt", weights_only=True)
    assert model.keys() == expected["network"].keys()

    # one MLflow run, continued and finished; each epoch's metrics are in it once
    client, run = only_run(interrupted)
    assert run.info.status == "FINISHED" and run.data.tags["monai_unet2.resumed_after_epoch"] == "1"
    dice = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_mean_dice")}
    assert sorted(dice) == list(range(1, MAX_EPOCHS + 1))
    alpha = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "boundary_weight")}
    assert alpha[MAX_EPOCHS] == pytest.approx(0.01 * MAX_EPOCHS)  # the schedule continued from the epoch
    # the best metric spans both processes, so the resumed run did not restart its "best" from scratch
    best_epoch = max(dice, key=lambda epoch: (dice[epoch], -epoch))
    assert resumed["best_metric"] == {"best_metric": pytest.approx(dice[best_epoch]), "best_metric_epoch": best_epoch}

    # nothing left to resume: a clear refusal, the finished state untouched
    result = subprocess.run(
        train_command(interrupted, "--resume", "True"),
        cwd=interrupted,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert f"this training already finished ({MAX_EPOCHS} of max_epochs {MAX_EPOCHS})" in result.stdout + result.stderr
    assert training_state(interrupted)["trainer"] == expected["trainer"]


SAVE_FOREVER = """
import sys, torch
from monai_unet2.handlers import save_checkpoint_atomically
state = {"weights": torch.randn(4_000_000)}
print("ready", flush=True)
step = 0
while True:
    step += 1
    state["step"] = step
    save_checkpoint_atomically(state, sys.argv[1])
"""


@pytest.mark.integration
def test_a_kill_during_a_save_never_leaves_a_corrupt_checkpoint(tmp_path):
    """SIGKILL a process that rewrites a 16 MB checkpoint in a loop, at 5 different moments."""
    path = tmp_path / "model.pt"
    steps = []
    for attempt in range(5):
        process = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(path)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.3 + 0.11 * attempt)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if path.exists():
            state = torch.load(path, weights_only=True)
            assert state["weights"].shape == (4_000_000,)
            steps.append(state["step"])
    assert len(steps) >= 3  # most kills found a finished save, and every file found was whole
    assert all(name.name.startswith(".model.tmp-") for name in tmp_path.iterdir() if name != path)


def engine_with_metric(values):
    engine = Engine(lambda engine, batch: None)
    engine.state.key_metric_name = "dice"

    @engine.on(Events.EPOCH_COMPLETED)
    def set_metric(engine):
        engine.state.metrics["dice"] = values[engine.state.epoch - 1]

    return engine


def test_resumed_best_model_saver_keeps_the_better_model(tmp_path):
    network = torch.nn.Linear(2, 1)
    first = AtomicCheckpointSaver(
        str(tmp_path), {"model": network}, save_key_metric=True, key_metric_filename="model.pt"
    )
    engine = engine_with_metric([0.5, 0.9])
    first.attach(engine)
    torch.nn.init.constant_(network.weight, 9.0)
    engine.run([0], max_epochs=2)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(9.0).all()
    saved = first.state_dict()

    torch.nn.init.constant_(network.weight, 1.0)
    resumed = AtomicCheckpointSaver(
        str(tmp_path), {"model": network}, save_key_metric=True, key_metric_filename="model.pt"
    )
    resumed.load_state_dict(saved)
    engine = engine_with_metric([0.7])
    resumed.attach(engine)
    engine.run([0], max_epochs=1)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(9.0).all()  # 0.7 < 0.9: kept

    fresh = AtomicCheckpointSaver(
        str(tmp_path), {"model": network}, save_key_metric=True, key_metric_filename="model.pt"
    )
    engine = engine_with_metric([0.7])
    fresh.attach(engine)
    engine.run([0], max_epochs=1)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(1.0).all()  # without the state: lost


def test_resume_switch_without_state_starts_fresh_and_a_bad_state_is_named(tmp_path, caplog):
    network = torch.nn.Linear(2, 1)
    path = tmp_path / "training_state.pt"
    engine = Engine(lambda engine, batch: None)
    with caplog.at_level("WARNING"):
        TrainingStateLoader(path, {"network": network}, resume=True).attach(engine)
    assert f"no training state at {path}: starting at epoch 1" in caplog.text
    engine.run([0], max_epochs=1)

    path.write_bytes(b"not a checkpoint")
    engine = Engine(lambda engine, batch: None)
    TrainingStateLoader(path, {"network": network}, resume=True).attach(engine)
    with pytest.raises(TrainingStateError, match=f"{path}: cannot resume from this training state"):
        engine.run([0], max_epochs=1)

    torch.save({"network": network.state_dict()}, path)
    engine = Engine(lambda engine, batch: None)
    TrainingStateLoader(
        path, {"network": network, "optimizer": torch.optim.SGD(network.parameters(), 0.1)}, resume=True
    ).attach(engine)
    with pytest.raises(
        TrainingStateError, match="not a training state of this configuration: missing optimizer, trainer"
    ):
        engine.run([0], max_epochs=1)


def test_best_model_saver_without_a_fixed_name_keeps_the_n_best_files(tmp_path):
    network = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": network}, key_metric_n_saved=2, file_prefix="net")
    engine = engine_with_metric([0.5, 0.9, 0.7, 0.6])
    saver.attach(engine)
    engine.run([0], max_epochs=4)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "net_model_key_metric=0.7000.pt",
        "net_model_key_metric=0.9000.pt",
    ]
    assert [priority for priority, _ in saver.state_dict()["_saved"]] == [0.7, 0.9]
    with pytest.raises(ValueError, match="best key-metric checkpoint only"):
        AtomicCheckpointSaver(str(tmp_path), {"model": network}, save_key_metric=False)
