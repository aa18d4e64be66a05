"""Unit tests of monai_unet2.tracking with real MLflow stores (SQLite in tmp_path), no server, no bundle run."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

pytest.importorskip("mlflow")
import mlflow

from monai_unet2.distributed import runs_on_rank_zero_only
from monai_unet2.networks import UNet
from monai_unet2.tracking import (
    MLflowRun,
    PredictionPreview,
    RegisterBestModel,
    TrackedMLFlowHandler,
    WeightsGuard,
    WeightsOverwriteError,
    assign_alias,
    dataset_digest,
    default_tracking_uri,
    export_bundle,
    load_model,
    register_bundle_version,
    render_preview,
    seg_description,
    unique_run_name,
)
from monai_unet2.tracking.bundle_model import stage_bundle
from monai_unet2.tracking.run import HOST_TAG, PID_TAG, _process_alive
from monai_unet2.tracking.settings import host_name
from monai_unet2.tracking.weights import MARKER_SUFFIX, file_sha256

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus_unet25d_segmentation"
SAMPLE_IMAGES = BUNDLE / "sample_data" / "imagesTr"


@pytest.fixture
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _engine(iterations: int = 3) -> Engine:
    def step(engine, batch):
        return [{"loss": torch.tensor(float(batch))}]

    engine = Engine(step)
    engine.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(boundary_weight=0.01 * e.state.epoch)
    )
    engine.state_data = list(range(iterations))
    return engine


def test_default_tracking_uri_is_absolute_sqlite_in_output_dir(tmp_path, monkeypatch, no_env_uri):
    monkeypatch.chdir(tmp_path)
    uri = default_tracking_uri("relative/eval")
    assert uri == f"sqlite:///{(tmp_path / 'relative' / 'eval' / 'mlflow.db').as_posix()}"
    assert (tmp_path / "relative" / "eval").is_dir()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert default_tracking_uri("other") == "http://127.0.0.1:1"
    assert not (tmp_path / "other").exists()


def test_unique_run_names_differ():
    names = {unique_run_name() for _ in range(50)}
    assert len(names) == 50 and all(n.startswith("run_") for n in names)


def test_dataset_digest_tracks_names_and_sizes_not_order(tmp_path):
    files = []
    for name, size in (("a.nii.gz", 10), ("b.nii.gz", 20)):
        (tmp_path / name).write_bytes(b"x" * size)
        files.append({"image": str(tmp_path / name), "label": str(tmp_path / name)})
    first = dataset_digest({"train": files, "val": files[:1]})
    assert first["dataset_train_files"] == "4" and first["dataset_val_files"] == "2"
    assert dataset_digest({"val": files[:1], "train": files[::-1]}) == first
    (tmp_path / "b.nii.gz").write_bytes(b"x" * 21)
    assert dataset_digest({"train": files, "val": files[:1]})["dataset_digest"] != first["dataset_digest"]
    assert dataset_digest({"train": files[:1], "val": files})["dataset_digest"] != first["dataset_digest"]


def test_tracking_objects_touch_no_store_until_attached(tmp_path, no_env_uri):
    """What lets every DDP rank build them while only rank 0 attaches: no database until an engine starts."""
    database = tmp_path / "mlflow.db"
    run = MLflowRun(tracking_uri=f"sqlite:///{database}", experiment_name="exp")
    handlers = [
        TrackedMLFlowHandler(run, iteration_log=False),
        PredictionPreview(run),
        RegisterBestModel(run, validator=_engine(), bundle_root=BUNDLE, registered_model_name="m"),
    ]
    assert not database.exists() and run.client is None and run.run_id is None
    assert all(runs_on_rank_zero_only(handler) for handler in handlers)
    handlers[0].attach(_engine())
    assert database.is_file()


def _dead_pid() -> int:
    return next(pid for pid in range(4_000_000, 3_000_000, -1) if not _process_alive(pid))


def test_handler_logs_into_one_run_and_marks_dead_runs(tmp_path, no_env_uri, monkeypatch):
    uri = default_tracking_uri(tmp_path)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("exp", artifact_location=(tmp_path / "art").as_uri())
    stale = client.create_run(experiment, run_name="crashed", tags={HOST_TAG: host_name(), PID_TAG: str(_dead_pid())})
    alive = client.create_run(experiment, run_name="other", tags={HOST_TAG: host_name(), PID_TAG: str(os.getpid())})
    monkeypatch.setattr("sys.orig_argv", ["python", "-m", "monai.bundle", "run", "--max_epochs", "2"])

    run = MLflowRun(
        tracking_uri=uri,
        experiment_name="exp",
        datalists={"train": [str(SAMPLE_IMAGES / "hippocampus_004.nii.gz")]},
        bundle_root=BUNDLE,
    )
    handler = TrackedMLFlowHandler(
        run,
        experiment_param={"learning_rate": 0.1},
        output_transform=lambda output: output[0]["loss"],
        close_on_complete=True,
    )
    engine = _engine()
    handler.attach(engine)
    engine.run(engine.state_data, max_epochs=2)

    assert client.get_run(stale.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == run.run_name != "crashed"
    assert [m.value for m in client.get_metric_history(run.run_id, "Loss")] == [0.0, 1.0, 2.0] * 2
    assert [m.value for m in client.get_metric_history(run.run_id, "boundary_weight")] == [0.01, 0.02]
    assert logged.data.params["learning_rate"] == "0.1" and len(logged.data.params["dataset_digest"]) == 64
    assert logged.data.params["dataset_train_files"] == "1"
    assert logged.data.tags["version_monai"] and logged.data.tags[PID_TAG] == str(os.getpid())
    assert logged.data.tags["command_line"] == "python -m monai.bundle run --max_epochs 2"
    assert "git_commit" in logged.data.tags or not (REPO / ".git").exists()
    configs = {Path(item.path).name for item in client.list_artifacts(run.run_id, "config")}
    assert configs == {path.name for path in (BUNDLE / "configs").iterdir()} and "train.json" in configs
    local = client.download_artifacts(run.run_id, "config/train.json", str(tmp_path / "download"))
    assert Path(local).read_bytes() == (BUNDLE / "configs" / "train.json").read_bytes()


def test_restored_run_is_reopened_and_the_evaluators_handler_joins_it(tmp_path, no_env_uri):
    uri = default_tracking_uri(tmp_path)
    first = MLflowRun(tracking_uri=uri, experiment_name="exp")
    engine = _engine()
    TrackedMLFlowHandler(first, output_transform=lambda o: o[0]["loss"]).attach(engine)
    engine.run(engine.state_data, max_epochs=1)
    saved = first.state_dict()
    assert saved == {"run_id": first.run_id, "run_name": first.run_name}
    client = mlflow.MlflowClient(uri)
    client.set_tag(saved["run_id"], "monai_unet2.end_reason", "process 1 on host died")
    client.set_terminated(saved["run_id"], "KILLED")  # what the next run does to a SIGKILLed one

    resumed = MLflowRun(tracking_uri=uri, experiment_name="exp")  # the new process draws a new name
    assert resumed.run_name != saved["run_name"]
    resumed.load_state_dict(saved)
    trainer, evaluator = _engine(), _engine(iterations=1)
    trainer.state_data = [5, 6, 7]
    TrackedMLFlowHandler(resumed, output_transform=lambda o: o[0]["loss"], close_on_complete=True).attach(trainer)
    TrackedMLFlowHandler(resumed, iteration_log=False).attach(evaluator)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run(evaluator.state_data, max_epochs=1))
    trainer.run(trainer.state_data, max_epochs=1)

    assert resumed.run_id == saved["run_id"] and resumed.run_name == saved["run_name"]
    assert [run.info.run_id for run in client.search_runs([client.get_experiment_by_name("exp").experiment_id])] == [
        saved["run_id"]
    ]
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == saved["run_name"]
    assert "monai_unet2.end_reason" not in run.data.tags and run.data.tags["monai_unet2.resumed_after_epoch"] == "0"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "Loss")] == [0.0, 1.0, 2.0, 5.0, 6.0, 7.0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "boundary_weight")] == [1, 1, 1]


def test_dead_server_switches_tracking_off_with_one_error(monkeypatch, caplog):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = MLflowRun(tracking_uri=f"http://127.0.0.1:{port}", experiment_name="exp")
    trainer, evaluator = _engine(), _engine(iterations=1)
    TrackedMLFlowHandler(run, output_transform=lambda o: o[0]["loss"]).attach(trainer)
    TrackedMLFlowHandler(run, iteration_log=False).attach(evaluator)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run(evaluator.state_data, max_epochs=1))
    with caplog.at_level(logging.ERROR, logger="monai_unet2.tracking.run"):
        state = trainer.run(trainer.state_data, max_epochs=2)
    assert state.epoch == 2 and state.iteration == 6
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert f"http://127.0.0.1:{port}" in errors[0] and "starting the run" in errors[0] and "switched off" in errors[0]
    assert run.disabled and run.run_id is None and run.state_dict() == {"run_id": "", "run_name": ""}


def test_champion_moves_only_to_a_better_version(tmp_path, no_env_uri):
    client = mlflow.MlflowClient(default_tracking_uri(tmp_path))
    client.create_registered_model("m")

    def version(score: str | None) -> str:
        tags = {} if score is None else {"val_mean_dice": score}
        return client.create_model_version("m", source=(tmp_path / "src").as_uri(), tags=tags).version

    v1 = version("0.5")
    assert assign_alias(client, "m", v1, "val_mean_dice", 0.5) == "champion"
    v2 = version("0.4")
    assert assign_alias(client, "m", v2, "val_mean_dice", 0.4) == "challenger"
    v3 = version("0.5")
    assert assign_alias(client, "m", v3, "val_mean_dice", 0.5) == "challenger"  # a tie keeps the champion
    v4 = version("0.7")
    assert assign_alias(client, "m", v4, "val_mean_dice", 0.7) == "champion"
    model = client.get_registered_model("m")
    assert model.aliases == {"champion": v4, "challenger": v3}
    assert assign_alias(client, "m", version(None), "loss", 0.1, greater_is_better=False) == "challenger"


def test_stage_load_and_export_a_local_bundle(tmp_path):
    torch.manual_seed(0)
    network = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32)
    bundle = stage_bundle(BUNDLE, network.state_dict(), tmp_path / "bundle")
    assert (bundle / "configs" / "inference.json").is_file() and (bundle / "LICENSE").is_file()
    loaded = load_model(str(bundle))
    assert not loaded.training
    x = torch.randn(2, 5, 48, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), network.eval()(x))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="busy"):
        export_bundle("models:/m@champion", tmp_path / "busy")
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        stage_bundle(tmp_path, {}, tmp_path / "nope")


def test_export_bundle_cli_reports_errors(tmp_path, capsys):
    from monai_unet2.tracking.__main__ import main

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert main(["export-bundle", "models:/m@champion", str(tmp_path / "busy")]) == 1
    assert "export destination exists and is not empty" in capsys.readouterr().err


def test_render_preview_writes_a_png(tmp_path):
    image = np.random.default_rng(0).normal(size=(20, 24, 10)).astype(np.float32)
    label = np.zeros((20, 24, 10), dtype=np.int64)
    label[5:10, 6:12, 7] = 1
    label[12:15, 6:12, 7] = 2
    path = tmp_path / "p.png"
    assert render_preview([(image, label, label), (image, label, np.zeros_like(label))], str(path), "epoch 1") == 2
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    flat = tmp_path / "flat.png"
    assert (
        render_preview([(image[..., 7], label[..., 7], label[..., 7])], str(flat)) == 1 and flat.stat().st_size > 2000
    )


def _guarded_run(tmp_path, network: torch.nn.Module, overwrite: bool = False, epochs: int = 2) -> Engine:
    """A training that saves ``network`` as ``model.pt`` after every epoch, guarded like the bundles' train.json."""
    path = tmp_path / "model.pt"
    engine = _engine()
    WeightsGuard(path, network, overwrite=overwrite).attach(engine)

    @engine.on(Events.EPOCH_COMPLETED)
    def save(_):  # the bundles' AtomicCheckpointSaver, registered before the guard's record
        with torch.no_grad():
            network.weight.add_(1.0)
        torch.save(network.state_dict(), path)

    engine.run(engine.state_data, max_epochs=epochs)
    return engine


def test_training_never_silently_replaces_weights_it_did_not_write(tmp_path, caplog):
    shipped = torch.nn.Linear(3, 2)
    torch.save(shipped.state_dict(), tmp_path / "model.pt")
    shipped_bytes = (tmp_path / "model.pt").read_bytes()

    with pytest.raises(
        WeightsOverwriteError,
        match=r"model\.pt holds weights that no training .* --ckpt_dir .* --overwrite_weights True",
    ):
        _guarded_run(tmp_path, torch.nn.Linear(3, 2))  # from scratch over the shipped weights
    assert (tmp_path / "model.pt").read_bytes() == shipped_bytes
    assert not (tmp_path / f"model.pt{MARKER_SUFFIX}").exists()

    fine_tuned = torch.nn.Linear(3, 2)
    fine_tuned.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # MONAI Label's pretrained
    _guarded_run(tmp_path, fine_tuned)
    record = json.loads((tmp_path / f"model.pt{MARKER_SUFFIX}").read_text())
    assert record == {"sha256": file_sha256(tmp_path / "model.pt"), "epoch": 2}
    assert (tmp_path / "model.pt").read_bytes() != shipped_bytes

    _guarded_run(tmp_path, torch.nn.Linear(3, 2))  # a rerun from scratch replaces what a training wrote here
    (tmp_path / "model.pt").write_bytes(shipped_bytes)  # someone copies other weights in
    with pytest.raises(WeightsOverwriteError):
        _guarded_run(tmp_path, torch.nn.Linear(3, 2))
    with caplog.at_level(logging.WARNING):
        _guarded_run(tmp_path, torch.nn.Linear(3, 2), overwrite=True)
    assert any("overwrite_weights is on" in r.getMessage() for r in caplog.records)


def test_registered_version_is_a_logged_model_with_a_signature(tmp_path, no_env_uri, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # nothing may land in the working directory
    uri = default_tracking_uri(tmp_path / "eval")
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("hippo", artifact_location=(tmp_path / "eval" / "mlruns").as_uri())
    run_id = client.create_run(experiment).info.run_id
    weights = torch.load(BUNDLE / "models" / "model.pt", weights_only=True)
    version = register_bundle_version(client, run_id, "hippo", BUNDLE, weights, {"epoch": "3"}, "epoch_0003", step=3)
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the process-wide URI it needed is unset again

    (logged,) = client.search_logged_models(experiment_ids=[experiment])
    assert (logged.name, logged.status.value, logged.source_run_id) == ("epoch_0003", "READY", run_id)
    assert version.source == f"models:/{logged.model_id}"
    assert [(o.model_id, o.step) for o in client.get_run(run_id).outputs.model_outputs] == [(logged.model_id, 3)]
    folder = Path(mlflow.artifacts.download_artifacts(client.get_model_version_download_uri("hippo", version.version)))
    signature = mlflow.models.Model.load(str(folder / "MLmodel")).signature
    inputs = {spec.name: (str(spec.type), spec.shape) for spec in signature.inputs.inputs}
    assert inputs == {"image": ("float32", (-1, -1, -1)), "affine": ("float64", (4, 4))}
    assert signature.outputs.inputs[0].shape == (-1, -1, -1)
    assert json.loads((folder / "serving_input_example.json").read_text())["inputs"]["affine"] == np.eye(4).tolist()
    requirements = (folder / "requirements.txt").read_text().split()
    assert requirements[0] == "monai-unet2==0.1.0" and any(r.startswith("torch>=") for r in requirements)
    assert not any(r.startswith("numpy==") for r in requirements)  # loads under numpy 1.26 (MONAI Label) and 2.x

    client.set_registered_model_alias("hippo", "champion", version.version)
    described = seg_description(BUNDLE, "models:/hippo@champion", uri)
    bundle_version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert described.algorithm_version == f"{bundle_version} (registered v{version.version})"
    assert described.algorithm_source == f"models:/hippo/{version.version}"
    assert list((tmp_path / "cwd").iterdir()) == []


def test_committed_weights_are_not_fine_tuned_in_place(tmp_path):
    """MONAI Label serving the repository's bundle through a symlink fine-tunes from its committed model.pt."""
    import subprocess

    shipped = torch.nn.Linear(3, 2)
    torch.save(shipped.state_dict(), tmp_path / "model.pt")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "model.pt"], ["commit", "-q", "-m", "shipped weights"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    committed = (tmp_path / "model.pt").read_bytes()
    fine_tuned = torch.nn.Linear(3, 2)
    fine_tuned.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    with pytest.raises(WeightsOverwriteError, match=r"committed file of the git checkout .* link a copy"):
        _guarded_run(tmp_path, fine_tuned)
    assert (tmp_path / "model.pt").read_bytes() == committed
    _guarded_run(tmp_path, fine_tuned, overwrite=True)
    assert (tmp_path / "model.pt").read_bytes() != committed
    _guarded_run(tmp_path, torch.nn.Linear(3, 2))  # modified since the commit, written by the training: its own now
