"""The plugin in the separate MONAI Label environment ``.venv-monailabel`` made by ``scripts/setup_monailabel.sh``.

monailabel 0.8.5 needs pydicom 2.4 and, left to pip, would replace the CPU torch with a CUDA build, so it lives in
its own venv; these tests drive that venv's interpreter in subprocesses: the plugin imports there, and a bundle is
served by a real ``monaibundle`` server. The module is marked ``monailabel``: it
fails (on purpose) when the venv has not been created, so the test command decides whether to create it or to
deselect these tests with ``-m "not monailabel"``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.monailabel, pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV = REPO_ROOT / ".venv-monailabel"
VENV_PYTHON = VENV / "bin" / "python"
SAMPLE_IMAGES = REPO_ROOT / "bundles" / "hippocampus_unet25d_segmentation" / "sample_data" / "imagesTr"
BUNDLE_NAME = "tiny_segmentation"
NETWORK_DEF = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}
ROI_SIZE = [16, 16, 16]


def _venv_python() -> Path:
    """The venv's interpreter; fails the calling test (not skips) when the venv is missing."""
    if not VENV_PYTHON.exists():
        pytest.fail(
            f"{VENV} does not exist: create it with `scripts/setup_monailabel.sh` (about 6 minutes, 2.7 GB), "
            'or deselect these tests with `pytest -m "not monailabel"`',
            pytrace=False,
        )
    return VENV_PYTHON


def _run_in_venv(venv_python: Path, code: str) -> dict:
    """Run ``code`` with the venv's interpreter and return the JSON object it prints on its last line."""
    result = subprocess.run([str(venv_python), "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, f"{venv_python} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_venv_imports_monailabel_with_this_checkouts_plugin():
    venv_python = _venv_python()
    found = _run_in_venv(
        venv_python,
        "import json, pathlib, monai_unet2, monai_unet2.transforms, monai_unet2.inferers\n"
        "import monailabel.app, monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle\n"
        "print(json.dumps({'monai_unet2': str(pathlib.Path(monai_unet2.__file__).resolve())}))",
    )
    assert Path(found["monai_unet2"]) == REPO_ROOT / "monai_unet2" / "__init__.py", "monai_unet2 must be editable"
    assert (VENV / "monailabel" / "sample-apps" / "monaibundle" / "main.py").is_file()


def _write_tiny_bundle(bundle_dir: Path, save_image_dir: Path) -> torch.nn.Module:
    """A throwaway bundle with the layout MONAI Label's monaibundle app reads; returns its network."""
    from monai.networks.nets import UNet

    (bundle_dir / "configs").mkdir(parents=True)
    (bundle_dir / "models").mkdir()
    tensor_format = {"type": "image", "spatial_shape": ROI_SIZE, "dtype": "float32", "is_patch_data": True}
    metadata = {
        "version": "0.0.1",
        "name": BUNDLE_NAME,
        "description": "throwaway bundle of tests/test_monailabel_install.py",
        "network_data_format": {
            "inputs": {"image": {**tensor_format, "num_channels": 1, "channel_def": {"0": "image"}}},
            "outputs": {
                "pred": {
                    **tensor_format,
                    "format": "segmentation",
                    "num_channels": 3,
                    "channel_def": {"0": "background", "1": "anterior", "2": "posterior"},
                }
            },
        },
    }
    inference = {
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "ScaleIntensityd", "keys": "image"},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI_SIZE, "sw_batch_size": 1},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": str(save_image_dir)},
            ],
        },
    }
    (bundle_dir / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (bundle_dir / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    torch.manual_seed(0)
    network = UNet(**{k: v for k, v in NETWORK_DEF.items() if k != "_target_"}).eval()
    torch.save(network.state_dict(), bundle_dir / "models" / "model.pt")
    return network


def _expected_label(network: torch.nn.Module, image_path: Path) -> np.ndarray:
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

    data = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), ScaleIntensityd("image")])(
        {"image": str(image_path)}
    )
    with torch.no_grad():
        logits = SlidingWindowInferer(roi_size=ROI_SIZE, sw_batch_size=1)(data["image"][None].float(), network)
    return logits[0].argmax(0).numpy()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_info(url: str, server: subprocess.Popen, log_path: Path, timeout_s: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"MONAI Label server exited with {server.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(1.0)
    pytest.fail(f"MONAI Label server did not answer {url} within {timeout_s} s:\n{log_path.read_text()[-4000:]}")


def test_monaibundle_server_starts_offline_and_serves_the_bundle_network(tmp_path):
    venv_python = _venv_python()
    app_dir = tmp_path / "apps" / "monaibundle"
    shutil.copytree(
        VENV / "monailabel" / "sample-apps" / "monaibundle",
        app_dir,
        ignore=shutil.ignore_patterns("logs", "model", "__pycache__"),
    )
    save_image_dir = tmp_path / "save_imaged_output"
    network = _write_tiny_bundle(tmp_path / "bundles" / BUNDLE_NAME, save_image_dir)
    (app_dir / "model").mkdir()
    (app_dir / "model" / BUNDLE_NAME).symlink_to(tmp_path / "bundles" / BUNDLE_NAME, target_is_directory=True)
    studies = tmp_path / "studies"
    studies.mkdir()
    image_path = shutil.copy(sorted(SAMPLE_IMAGES.glob("*.nii.gz"))[0], studies)
    image_id = Path(image_path).name.removesuffix(".nii.gz")

    port = _free_port()
    log_path = tmp_path / "server.log"
    command = [str(venv_python), "-m", "monailabel.main", "start_server", "--app", str(app_dir)]
    command += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)]
    for key, value in (("models", BUNDLE_NAME), ("zoo_source", "local"), ("sam2", "false")):
        command += ["--conf", key, value]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        info = _wait_for_info(f"http://127.0.0.1:{port}/info/", server, log_path)
        model = info["models"][BUNDLE_NAME]
        assert model["labels"] == {"anterior": 1, "posterior": 2}
        assert model["dimension"] == 3
        assert info["datastore"]["total"] == 1

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/infer/{BUNDLE_NAME}?image={image_id}&output=image", method="POST"
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            (tmp_path / "served.nii.gz").write_bytes(response.read())
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    served = nib.load(tmp_path / "served.nii.gz")
    source = nib.load(image_path)
    assert served.shape == source.shape
    np.testing.assert_allclose(served.affine, source.affine, atol=1e-4)
    served_label = np.asarray(served.dataobj)
    expected = _expected_label(network, Path(image_path))
    assert set(np.unique(served_label)) <= {0, 1, 2}
    np.testing.assert_array_equal(served_label, expected)
    assert not save_image_dir.exists(), "MONAI Label must drop the bundle's SaveImaged"
