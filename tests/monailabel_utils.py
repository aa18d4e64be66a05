"""Helpers of ``tests/test_monailabel_server.py``: real MONAI Label and Orthanc servers on 127.0.0.1, the
``monaibundle`` app folder, DICOM copies that a PACS accepts, and the bundle run directly as the oracle.

The servers run in their own process groups (``start_new_session``) and are stopped by that group's id, so the
training subprocess that MONAI Label spawns goes down with its server even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import torch
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

REPO_ROOT = Path(__file__).resolve().parents[1]
MONAILABEL_VENV = REPO_ROOT / ".venv-monailabel"
MONAILABEL_PYTHON = MONAILABEL_VENV / "bin" / "python"
MONAIBUNDLE_APP = MONAILABEL_VENV / "monailabel" / "sample-apps" / "monaibundle"
ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
ORTHANC_PLUGINS = {
    "DICOMweb": Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    # decodes/transcodes JPEG 2000: WADO-RS clients (MONAI Label) ask for Explicit VR Little Endian
    "GDCM": Path("/usr/share/orthanc/plugins/libOrthancGdcm.so"),
}


def require_monailabel_venv() -> Path:
    """The MONAI Label interpreter; fails the calling test (never skips) when the venv is missing."""
    if not MONAILABEL_PYTHON.exists():
        pytest.fail(
            f"{MONAILABEL_VENV} does not exist: create it with `scripts/setup_monailabel.sh`, "
            'or deselect these tests with `pytest -m "not monailabel"`',
            pytrace=False,
        )
    return MONAILABEL_PYTHON


def require_dcmqi() -> None:
    """Fails when dcmqi's ``itkimage2segimage`` is missing: MONAI Label would try to download it from GitHub."""
    if not (MONAILABEL_VENV / "bin" / "itkimage2segimage").exists():
        pytest.fail(
            f"{MONAILABEL_VENV}/bin/itkimage2segimage is missing: a DICOMweb MONAI Label server downloads dcmqi from "
            "GitHub at start-up without it; install the `dcmqi` wheel into the venv (scripts/setup_monailabel.sh)",
            pytrace=False,
        )


def require_orthanc() -> None:
    """Fails the calling test when Orthanc or one of its plugins is not installed."""
    missing = [str(p) for p in (ORTHANC_BINARY, *ORTHANC_PLUGINS.values()) if not p.exists()]
    if missing:
        pytest.fail(
            f"Orthanc is not installed ({', '.join(missing)} missing): run scripts/setup_orthanc.sh", pytrace=False
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server started in its own process group, logged to a file, stopped by group id on exit.

    Args:
        name: shown in failure messages.
        command: the command line.
        log_path: file that receives stdout and stderr.
        env: environment of the server (default: this process's).
        cwd: working directory of the server.
    """

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_until_answers(self, url: str, timeout_s: float = 240.0) -> requests.Response:
        """Poll ``url`` until it answers 200; fail with the server's log if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}", pytrace=False)
            try:
                response = requests.get(url, timeout=5)
                if response.status_code == 200:
                    return response
            except requests.RequestException:
                pass
            time.sleep(1.0)
        pytest.fail(f"{self.name} did not answer {url} within {timeout_s} s:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError):  # children (MONAI Label's training subprocess) left in the group
            os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def copy_bundle(bundle_dir: Path, destination: Path) -> Path:
    """Copy a bundle as a user drops it into a MONAI Label app: configs, docs, sample data and every model it
    ships (``models/model.pt`` and the extra views' ``models/<view>/``), without local evaluation or run logs."""
    shutil.copytree(bundle_dir, destination, ignore=shutil.ignore_patterns("eval", "mlruns", "*.db"))
    return destination


def make_monaibundle_app(app_dir: Path, bundles: dict[str, Path]) -> Path:
    """The ``monaibundle`` sample app copied from the venv, with ``bundles`` linked as ``model/<name>``."""
    shutil.copytree(MONAIBUNDLE_APP, app_dir, ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__"))
    (app_dir / "model").mkdir()
    for name, folder in bundles.items():
        (app_dir / "model" / name).symlink_to(folder, target_is_directory=True)
    return app_dir


def start_monailabel(app_dir: Path, studies: str, models: list[str], work_dir: Path) -> tuple[ServerProcess, str]:
    """Start ``python -m monailabel.main start_server`` offline on a free port; returns the server and its URL.

    ``PATH`` starts with the venv's ``bin`` so that the server finds dcmqi's ``itkimage2segimage`` (otherwise it
    tries to download dcmqi from GitHub when ``studies`` is a DICOMweb URL, and fails offline).
    """
    python = require_monailabel_venv()
    if studies.startswith(("http://", "https://")):
        require_dcmqi()
    port = free_port()
    command = [str(python), "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", studies]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    for key, value in (("models", ",".join(models)), ("zoo_source", "local"), ("sam2", "false")):
        command += ["--conf", key, value]
    env = dict(os.environ)
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["MONAI_LABEL_DICOMWEB_CACHE_PATH"] = str(work_dir / "dicomweb_cache")
    env["MONAI_LABEL_SESSION_PATH"] = str(work_dir / "sessions")
    env["MONAI_LABEL_TRACKING_ENABLED"] = "false"
    server = ServerProcess("MONAI Label", command, work_dir / "monailabel.log", env=env, cwd=work_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_until_answers(f"{url}/info/")
    except BaseException:
        server.stop()
        raise
    return server, url


def start_orthanc(work_dir: Path) -> tuple[ServerProcess, str]:
    """Orthanc with DICOMweb (and GDCM for JPEG 2000) on free localhost ports, storage in ``work_dir``."""
    require_orthanc()
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "monai_unet2_test_pacs",
        "StorageDirectory": str(work_dir / "storage"),
        "IndexDirectory": str(work_dir / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(p) for p in ORTHANC_PLUGINS.values()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    config_path = work_dir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    server = ServerProcess("Orthanc", [str(ORTHANC_BINARY), str(config_path)], work_dir / "orthanc.log", cwd=work_dir)
    url = f"http://127.0.0.1:{http_port}"
    try:
        server.wait_until_answers(f"{url}/system", timeout_s=60)
    except BaseException:
        server.stop()
        raise
    return server, url


def series_with_uids(source: Path, destination: Path, patient_id: str) -> str:
    """Copy a DICOM series whose Study/Series/SOP Instance UIDs are empty, filling them in; returns the series UID.

    Pixels (still compressed) and geometry are untouched. The SOP Instance UID and SOP Class UID are taken from the
    file meta header, where these files still have them; study and series UIDs are derived from ``patient_id``
    so that reruns give the same UIDs.
    """
    study_uid = generate_uid(entropy_srcs=[patient_id, "study"])
    series_uid = generate_uid(entropy_srcs=[patient_id, "series"])
    destination.mkdir(parents=True)
    for path in sorted(source.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.PatientID = study_uid, series_uid, patient_id
        dataset.save_as(destination / path.name, enforce_file_format=True)
    return series_uid


def cropped_series(source: Path, destination: Path, first_row: int, first_column: int, size: int) -> str:
    """Crop every slice of a series in-plane (uncompressed output, new series and SOP Instance UIDs).

    The kept voxels keep their values and their physical positions: ImagePositionPatient moves to the first kept
    voxel. Used to keep a CPU inference on CT affordable in a test; returns the new series UID.
    """
    series_uid = generate_uid(entropy_srcs=[str(source), "crop", str(first_row), str(first_column), str(size)])
    destination.mkdir(parents=True)
    for path in sorted(source.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array[first_row : first_row + size, first_column : first_column + size].copy()
        orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
        row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
        position = np.asarray(dataset.ImagePositionPatient, dtype=float)
        position += first_column * column_spacing * orientation[:3] + first_row * row_spacing * orientation[3:]
        dataset.ImagePositionPatient = [DSfloat(v, auto_format=True) for v in position]
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.PixelData = pixels.tobytes()
        dataset["PixelData"].VR = "OW"
        dataset.Rows, dataset.Columns = pixels.shape
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(dataset.SOPInstanceUID)])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(destination / path.name, enforce_file_format=True)
    return series_uid


def bundle_prediction(bundle_dir: Path, image: str | Path, force_modality: bool = False) -> np.ndarray:
    """The bundle's ``inference.json`` run directly (no MONAI Label) with weights loaded strictly.

    MONAI Label loads ``models/model.pt`` non-strictly, so a served prediction equal to this one proves that the
    served network has the bundle's weights. ``SaveImaged`` writers are dropped, like MONAI Label does.
    ``force_modality`` lets a DICOM series of another modality through the bundle's modality guard (MONAI Label
    hands the bundle a NIfTI, on which the guard only warns).
    """
    from monai.bundle import ConfigParser
    from monai.transforms import Compose, SaveImaged

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    parser["device"] = "$torch.device('cpu')"
    parser["force_modality"] = force_modality
    network = parser.get_parsed_content("network_def")
    checkpoint = torch.load(bundle_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(checkpoint.get("model", checkpoint), strict=True)
    network.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")
    postprocessing = Compose([t for t in postprocessing.transforms if not isinstance(t, SaveImaged)])
    data = preprocessing({"image": str(image)})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    return np.asarray(postprocessing(data)["pred"][0]).astype(np.uint8)


def dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    predicted, expected = prediction == label, truth == label
    total = predicted.sum() + expected.sum()
    return 2.0 * float(np.logical_and(predicted, expected).sum()) / float(total) if total else 1.0


def server_error(log_path: Path, chars: int = 3000) -> str:
    """The end of the last traceback in a MONAI Label log: the server answers only "Internal Server Error"."""
    deadline = time.monotonic() + 10.0
    while True:  # uvicorn logs the exception after the 500 has been sent
        text = log_path.read_text(errors="replace")
        start = text.rfind("Traceback (most recent call last)")
        if start >= 0 or time.monotonic() > deadline:
            return text[start:][-chars:] if start >= 0 else text[-chars:]
        time.sleep(0.5)


def infer(url: str, model: str, image_id: str, log_path: Path, timeout_s: float = 300.0) -> bytes:
    """``POST /infer/<model>?image=<id>&output=image``: the label volume file the server returns."""
    response = requests.post(f"{url}/infer/{model}", params={"image": image_id, "output": "image"}, timeout=timeout_s)
    assert response.status_code == 200, (
        f"/infer/{model} on {image_id}: {response.status_code} {response.text[:500]}\n{server_error(log_path)}"
    )
    return response.content
