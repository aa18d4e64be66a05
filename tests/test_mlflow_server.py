"""End-to-end MLflow tests with real processes on 127.0.0.1: `mlflow server`, bundle runs, `mlflow models serve`.

Every process is started by the test, in its own session, and stopped by its process id (group) with a timeout.
Bundle outputs go to tmp_path only (never into bundles/*/models or eval).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

mlflow = pytest.importorskip("mlflow")
nib = pytest.importorskip("nibabel")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus_unet25d_segmentation"
NAME = "hippocampus_unet25d_segmentation"
SAMPLE = BUNDLE / "sample_data" / "imagesTr" / "hippocampus_004.nii.gz"
VENV_BIN = Path(sys.executable).parent
ERROR_PREFIX = "MLflow tracking to {uri} failed while"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(**extra: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)  # the process group of the process this test started
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    _stop(process)
    raise TimeoutError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    folder.mkdir(parents=True, exist_ok=True)
    port, log = _free_port(), folder / "server.log"
    command = [
        str(VENV_BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env(), start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    _wait_http(f"{uri}/health", process, log)
    return process, uri


def _train(folder: Path, *args: str, uri: str | None, cwd: Path | None = None, wait: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(BUNDLE / "configs" / "train.json"), "--bundle_root", str(BUNDLE),
        "--ckpt_dir", str(folder / "models"), "--output_dir", str(folder / "eval"), "--epoch_length", "3", *args,
    ]  # fmt: skip
    log = folder / "train.log"
    process = subprocess.Popen(
        command,
        cwd=cwd or folder,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=_env(MLFLOW_TRACKING_URI=uri),
        start_new_session=True,
    )
    if not wait:
        return process, log
    try:
        process.wait(timeout=400)
    finally:
        _stop(process)
    assert process.returncode == 0, log.read_text()[-4000:]
    return log.read_text()


def _run(client, run_name: str):
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real tracking server with two 1-epoch runs: the default bundle, then the same with learning rate 0."""
    folder = tmp_path_factory.mktemp("server")
    server, uri = _start_server(folder / "server")
    try:
        names = {"good": f"good_{uuid.uuid4().hex[:6]}", "worse": f"worse_{uuid.uuid4().hex[:6]}"}
        _train(folder / "good", "--max_epochs", "1", "--run_name", names["good"], uri=uri)
        _train(folder / "worse", "--max_epochs", "1", "--learning_rate", "0.0", "--run_name", names["worse"], uri=uri)
        yield {"uri": uri, "folder": folder, "names": names, "client": mlflow.MlflowClient(uri, registry_uri=uri)}
    finally:
        _stop(server)


def test_run_logs_params_metrics_config_and_preview(trained, tmp_path):
    client = trained["client"]
    run = _run(client, trained["names"]["good"])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["learning_rate"] == "0.002" and params["context_slices"] == "2" and params["max_epochs"] == "1"
    assert params["dataset_train_files"] == "18" and params["dataset_val_files"] == "6"
    assert len(params["dataset_digest"]) == 64
    assert tags["version_monai"] == __import__("monai").__version__ and tags["version_torch"]
    assert tags["version_mlflow"] == mlflow.__version__
    assert len(client.get_metric_history(run_id, "train_loss")) == 3  # 9 train volumes / 4 per batch
    assert [m.value for m in client.get_metric_history(run_id, "lr_group_0")] == [0.002] * 3
    assert [m.value for m in client.get_metric_history(run_id, "boundary_weight")] == [0.01]
    for metric in ("val_mean_dice", "val_dice_anterior", "val_dice_posterior"):
        history = client.get_metric_history(run_id, metric)
        assert len(history) == 1 and history[0].step == 1 and 0.0 <= history[0].value <= 1.0
    dice = run.data.metrics
    assert dice["val_mean_dice"] == pytest.approx((dice["val_dice_anterior"] + dice["val_dice_posterior"]) / 2)

    assert f"--run_name {trained['names']['good']}" in tags["command_line"] and "--max_epochs 1" in tags["command_line"]
    config_file = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="config/train.json", dst_path=str(tmp_path), tracking_uri=trained["uri"]
    )
    assert Path(config_file).read_bytes() == (BUNDLE / "configs" / "train.json").read_bytes()
    preview = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="previews/epoch_0001.png", dst_path=str(tmp_path), tracking_uri=trained["uri"]
    )
    assert Path(preview).read_bytes()[:4] == b"\x89PNG" and Path(preview).stat().st_size > 5000


def test_registry_champion_and_worse_challenger(trained, tmp_path):
    client = trained["client"]
    good, worse = (_run(client, trained["names"][k]) for k in ("good", "worse"))
    good_dice, worse_dice = good.data.metrics["val_mean_dice"], worse.data.metrics["val_mean_dice"]
    assert worse_dice < good_dice, "precondition: the learning-rate-0 run validates worse"
    champion = client.get_model_version_by_alias(NAME, "champion")
    challenger = client.get_model_version_by_alias(NAME, "challenger")
    assert champion.run_id == good.info.run_id and challenger.run_id == worse.info.run_id
    assert float(champion.tags["val_mean_dice"]) == pytest.approx(good_dice, abs=1e-6)
    assert float(challenger.tags["val_mean_dice"]) == pytest.approx(worse_dice, abs=1e-6)
    assert champion.tags["key_metric"] == "val_mean_dice" and champion.tags["epoch"] == "1"
    assert champion.tags["bundle_version"] and "val_dice_posterior" in champion.tags
    assert good.data.tags["registered_model_version"] == f"{NAME}/{champion.version}"
    for key in ("git_commit", "git_dirty"):  # one truth: the version carries its run's
        assert champion.tags.get(key) == good.data.tags.get(key), key
    logged = client.search_logged_models(experiment_ids=[good.info.experiment_id])
    assert {m.model_id for m in logged} >= {champion.source.removeprefix("models:/")}
    model_folder = mlflow.artifacts.download_artifacts(
        client.get_model_version_download_uri(NAME, champion.version),
        dst_path=str(tmp_path),
        tracking_uri=trained["uri"],
    )
    signature = mlflow.models.Model.load(str(Path(model_folder) / "MLmodel")).signature
    assert [spec.shape for spec in signature.inputs.inputs] == [(-1, -1, -1), (4, 4)]


def test_load_model_in_fresh_process_matches_checkpoint(trained, tmp_path):
    script = (
        "import sys, numpy as np, torch\n"
        "from monai_unet2.tracking import load_model, export_bundle\n"
        "net = load_model(sys.argv[1])\n"
        "assert not net.training\n"
        "torch.manual_seed(0)\n"
        "with torch.no_grad():\n"
        "    np.save(sys.argv[2], net(torch.randn(2, 5, 48, 64)).numpy())\n"
        "export_bundle(sys.argv[1], sys.argv[3])\n"
    )
    uri = f"models:/{NAME}@champion"
    done = subprocess.run(
        [sys.executable, "-c", script, uri, str(tmp_path / "out.npy"), str(tmp_path / "exported")],
        env=_env(MLFLOW_TRACKING_URI=trained["uri"]), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    network = parser.get_parsed_content("network_def")
    checkpoint = trained["folder"] / "good" / "models" / "model.pt"
    network.load_state_dict(torch.load(checkpoint, weights_only=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order as the subprocess (OMP_NUM_THREADS=1): bitwise comparable
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            expected = network.eval()(torch.randn(2, 5, 48, 64)).numpy()
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)

    exported = tmp_path / "exported"
    assert (exported / "configs" / "inference.json").is_file() and (exported / "configs" / "train.json").is_file()
    exported_weights = torch.load(exported / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(exported_weights[k], v) for k, v in torch.load(checkpoint, weights_only=True).items())


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 1.0 if not x.any() and not y.any() else 2.0 * (x & y).sum() / (x.sum() + y.sum())


def test_served_model_answers_like_bundle_inference(trained, tmp_path):
    port, log = _free_port(), tmp_path / "serve.log"
    serve = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env(MLFLOW_TRACKING_URI=trained["uri"]),
        start_new_session=True,
    )  # fmt: skip
    try:
        # meanwhile: the bundle's own inference, weights straight from the registry (--ckpt_path models:/...)
        (tmp_path / "input").mkdir()
        shutil.copy(SAMPLE, tmp_path / "input" / SAMPLE.name)  # a link out of the input folder is refused
        inference = subprocess.run(
            [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
             "--bundle_root", str(BUNDLE), "--ckpt_path", f"models:/{NAME}@champion", "--tracking_uri", trained["uri"],
             "--dataset_dir", str(tmp_path / "input"), "--output_dir", str(tmp_path / "pred")],
            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert inference.returncode == 0, inference.stderr[-3000:]
        expected = np.asarray(nib.load(tmp_path / "pred" / "hippocampus_004_seg.nii.gz").dataobj)

        _wait_http(f"http://127.0.0.1:{port}/ping", serve, log, timeout=180)
        image = nib.load(SAMPLE)
        body = {"inputs": {"image": np.asarray(image.dataobj).tolist(), "affine": image.affine.tolist()}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as response:
            served = np.asarray(json.loads(response.read())["predictions"])
        bad_requests = {
            "a 2D image": {"inputs": {"image": [[1.0, 2.0], [3.0, 4.0]], "affine": np.eye(4).tolist()}},
            "no affine": {"inputs": {"image": np.zeros((4, 4, 4)).tolist()}},
            "text": {"inputs": {"image": "not a volume", "affine": np.eye(4).tolist()}},
        }
        answers = {what: _post(port, body) for what, body in bad_requests.items()}
    finally:
        _stop(serve)
    for what, (status, answer) in answers.items():
        assert 400 <= status < 500, (what, status, answer)
        assert "stack_trace" not in answer and str(REPO) not in answer and "site-packages" not in answer, answer
        assert json.loads(answer)["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), answer
    assert "(-1, -1, -1)" in answers["a 2D image"][1] and "affine" in answers["no affine"][1]
    assert served.shape == expected.shape == image.shape
    assert set(np.unique(served)) <= {0, 1, 2} and (served > 0).any()
    assert [_dice(served, expected, label) for label in (1, 2)] == [1.0, 1.0]
    assert np.array_equal(served, expected)


def _post(port: int, body: dict) -> tuple[int, str]:
    """POST ``body`` to the served model; the status and the answer, also for 4xx / 5xx."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_server_killed_mid_run_training_finishes(tmp_path):
    server, uri = _start_server(tmp_path / "server")
    run_name = f"killed_{uuid.uuid4().hex[:6]}"
    try:
        training, log = _train(tmp_path / "run", "--max_epochs", "2", "--run_name", run_name, uri=uri, wait=False)
        client = mlflow.MlflowClient(uri)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and training.poll() is None:
            experiment = client.get_experiment_by_name(NAME)
            runs = experiment and client.search_runs([experiment.experiment_id], f"attributes.run_name = '{run_name}'")
            if runs and "train_loss" in runs[0].data.metrics:
                break
            time.sleep(0.3)
        assert training.poll() is None, "training ended before the server could be killed:\n" + log.read_text()[-3000:]
        _stop(server, signal.SIGKILL)
        training.wait(timeout=400)
    finally:
        _stop(server, signal.SIGKILL)
        if "training" in locals():
            _stop(training)
    output = log.read_text()
    assert training.returncode == 0, output[-4000:]
    assert (tmp_path / "run" / "models" / "model.pt").is_file()
    assert "Epoch[2] Metrics" in output or "Epoch: 2/2" in output
    assert output.count(ERROR_PREFIX.format(uri=uri)) == 1, output[-4000:]
    assert "switched off for the rest of this run; training and checkpointing continue" in output


def test_embedded_default_from_another_directory_with_monai_tracking_flag(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _train(tmp_path / "run", "--max_epochs", "1", "--tracking", "mlflow", uri=None, cwd=elsewhere)
    assert list(elsewhere.iterdir()) == []
    database = tmp_path / "run" / "eval" / "mlflow.db"
    assert database.is_file() and (tmp_path / "run" / "eval" / "mlruns").is_dir()
    client = mlflow.MlflowClient(f"sqlite:///{database}")
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert {"train_loss", "val_mean_dice", "val_dice_anterior", "boundary_weight"} <= set(runs[0].data.metrics)
    assert client.get_model_version_by_alias(NAME, "champion").run_id == runs[0].info.run_id
