"""The hippocampus bundle served by a real MONAI Label server (``monaibundle`` app), and the PACS round trip.

Two module-scoped setups, each started once:

* ``local_server``: MONAI Label on a studies folder (a copy of the bundle's sample images, with their labels as
  finished annotations). The app links two copies of the bundle: one to serve, one to retrain, so that the
  training test cannot change what the other tests serve. Neither copy is the repository's bundle folder.
* ``pacs``: Orthanc with DICOMweb holding the committed CT series, and MONAI Label started with
  ``--studies http://127.0.0.1:<port>/dicom-web``.

Every server runs on free 127.0.0.1 ports in its own process group and is stopped by that group's id at module
end, also when a test fails. Missing environments (``.venv-monailabel``, Orthanc, the bundle's weights) fail the
tests: they never skip.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel_utils import (
    REPO_ROOT,
    bundle_prediction,
    copy_bundle,
    cropped_series,
    dice,
    infer,
    make_monaibundle_app,
    require_monailabel_venv,
    series_with_uids,
    server_error,
    start_monailabel,
    start_orthanc,
)

pytestmark = [pytest.mark.monailabel, pytest.mark.integration, pytest.mark.slow]

MODEL = "hippocampus_unet25d_segmentation"
RETRAIN_MODEL = f"{MODEL}_retrain"
BUNDLE = REPO_ROOT / "bundles" / MODEL
SHIPPED_WEIGHTS = BUNDLE / "models" / "model.pt"
SAMPLE_IMAGES = BUNDLE / "sample_data" / "imagesTr"
SAMPLE_LABELS = BUNDLE / "sample_data" / "labelsTr"
DICE_CASES = ("hippocampus_004", "hippocampus_199")
CT_SERIES = REPO_ROOT / "tests" / "data" / "dicom" / "totalseg_ct20" / "ct"
CT_CROP = {"first_row": 200, "first_column": 150, "size": 64}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shipped_weights() -> Path:
    if not SHIPPED_WEIGHTS.is_file():
        pytest.fail(f"{SHIPPED_WEIGHTS} is missing: the bundle ships no trained weights", pytrace=False)
    return SHIPPED_WEIGHTS


def _load_label(content: bytes, path: Path) -> nib.Nifti1Image:
    path.write_bytes(content)
    image = nib.load(path)
    image.get_fdata()  # read now: the file may be overwritten by the next response
    return image


def _served_label(server: SimpleNamespace, model: str, image_id: str, path: Path) -> nib.Nifti1Image:
    return _load_label(infer(server.url, model, image_id, server.log), path)


def _voxels(image: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(image.dataobj).astype(np.int16)


@pytest.fixture(scope="module")
def local_server(tmp_path_factory):
    require_monailabel_venv()
    weights = _shipped_weights()
    work = tmp_path_factory.mktemp("monailabel_local")
    served = copy_bundle(BUNDLE, work / "bundles" / MODEL)
    retrain = copy_bundle(BUNDLE, work / "bundles" / RETRAIN_MODEL)
    studies = work / "studies"
    shutil.copytree(SAMPLE_IMAGES, studies)
    shutil.copytree(SAMPLE_LABELS, studies / "labels" / "final")
    app = make_monaibundle_app(work / "apps" / "monaibundle", {MODEL: served, RETRAIN_MODEL: retrain})
    server, url = start_monailabel(app, str(studies), [MODEL, RETRAIN_MODEL], work)
    with server:
        yield SimpleNamespace(
            url=url, served=served, retrain=retrain, work=work, log=server.log_path, shipped_sha=_sha256(weights)
        )


@pytest.fixture(scope="module")
def served_cases(local_server):
    """``/infer`` on the Dice cases, once for the module."""
    return {
        case: _served_label(local_server, MODEL, case, local_server.work / f"served_{case}.nii.gz")
        for case in DICE_CASES
    }


def test_info_lists_the_bundle_with_its_labels_and_dimension(local_server):
    info = requests.get(f"{local_server.url}/info/", timeout=30).json()
    model = info["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["labels"] == {"anterior": 1, "posterior": 2}
    assert model["dimension"] == 3
    assert model["version"] == json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert MODEL in info["trainers"]
    assert info["datastore"]["completed"] == len(list(SAMPLE_LABELS.glob("*.nii.gz")))


def test_infer_returns_the_bundle_prediction_on_the_image_grid(local_server, served_cases):
    for case, served in served_cases.items():
        source = nib.load(SAMPLE_IMAGES / f"{case}.nii.gz")
        assert served.shape == source.shape, case
        np.testing.assert_allclose(served.affine, source.affine, atol=1e-4, err_msg=case)
        assert served.get_data_dtype() == np.uint8, f"{case}: labels must reach Slicer as uint8, not float32"
        expected = bundle_prediction(local_server.served, SAMPLE_IMAGES / f"{case}.nii.gz")
        np.testing.assert_array_equal(_voxels(served), expected, err_msg=f"{case}: served != bundle run directly")


def test_infer_with_shipped_weights_reaches_dice_0_8(local_server, served_cases):
    """Mean Dice per class over all committed sample volumes, each inferred through ``/infer``."""
    scores = []
    for image in sorted(SAMPLE_IMAGES.glob("*.nii.gz")):
        case = image.name[: -len(".nii.gz")]
        served = served_cases.get(case) or _served_label(
            local_server, MODEL, case, local_server.work / f"served_{case}.nii.gz"
        )
        truth = np.asarray(nib.load(SAMPLE_LABELS / f"{case}.nii.gz").dataobj)
        scores.append([dice(_voxels(served), truth, label) for label in (1, 2)])
    anterior, posterior = np.mean(scores, axis=0)
    assert len(scores) == 12
    assert anterior >= 0.8 and posterior >= 0.8, f"sample Dice: anterior {anterior:.3f}, posterior {posterior:.3f}"


def test_uploaded_volume_is_inferred_in_its_own_space(local_server, served_cases, tmp_path):
    """What Slicer's MONAI Label client does with a local volume: ``PUT /datastore/?image=<id>`` (the deprecated
    route it still uses), then ``/infer`` on the new id."""
    case = DICE_CASES[0]
    source = nib.load(SAMPLE_IMAGES / f"{case}.nii.gz")
    affine = source.affine.copy()
    affine[:3, 3] += [12.0, -30.0, 7.0]
    upload = tmp_path / "local_volume.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj).astype(np.float32), affine), upload)
    image_id = "slicer_local_volume"
    with open(upload, "rb") as file:
        response = requests.put(
            f"{local_server.url}/datastore/",
            params={"image": image_id},
            files={"file": (upload.name, file, "application/octet-stream")},
            data={"params": "{}"},
            timeout=60,
        )
    assert response.status_code == 200, f"{response.text[:500]}\n{server_error(local_server.log)}"
    assert response.json()["image"] == image_id

    served = _served_label(local_server, MODEL, image_id, tmp_path / "served.nii.gz")
    assert served.shape == source.shape
    np.testing.assert_allclose(served.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(_voxels(served), _voxels(served_cases[case]))


def test_four_concurrent_infer_requests_agree(local_server, served_cases, tmp_path):
    case = DICE_CASES[1]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: infer(local_server.url, MODEL, case, local_server.log), range(4)))
    labels = [_load_label(content, tmp_path / f"concurrent_{i}.nii.gz") for i, content in enumerate(results)]
    for label in labels:
        np.testing.assert_array_equal(label.affine, labels[0].affine)
        np.testing.assert_array_equal(_voxels(label), _voxels(served_cases[case]))


def test_train_rewrites_the_weights_and_the_next_infer_serves_them(local_server, tmp_path):
    case = DICE_CASES[0]
    image = SAMPLE_IMAGES / f"{case}.nii.gz"
    weights = local_server.retrain / "models" / "model.pt"
    before_sha, before_mtime = _sha256(weights), weights.stat().st_mtime_ns
    before = _voxels(_served_label(local_server, RETRAIN_MODEL, case, tmp_path / "before.nii.gz"))

    # Slicer's defaults except the epochs; "pretrained": false crashes monailabel 0.8.5 (os.path.exists(None))
    request = {"max_epochs": 1, "device": "cpu", "val_split": 0.2, "multi_gpu": False, "pretrained": True}
    response = requests.post(
        f"{local_server.url}/train/{RETRAIN_MODEL}", params={"run_sync": "true"}, json=request, timeout=900
    )
    assert response.status_code == 200, f"/train: {response.text[:500]}\n{server_error(local_server.log)}"

    assert weights.stat().st_mtime_ns != before_mtime
    assert _sha256(weights) != before_sha
    after = _voxels(_served_label(local_server, RETRAIN_MODEL, case, tmp_path / "after.nii.gz"))
    np.testing.assert_array_equal(after, bundle_prediction(local_server.retrain, image))
    assert (after != before).sum() > 0, "one more epoch must change the prediction: is the old network served?"
    assert _sha256(SHIPPED_WEIGHTS) == local_server.shipped_sha, "the repository's weights must stay untouched"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    require_monailabel_venv()
    _shipped_weights()
    work = tmp_path_factory.mktemp("pacs")
    full = work / "dicom" / "full"
    full_uid = series_with_uids(CT_SERIES, full, patient_id="TOTALSEG_CT20")
    crop = work / "dicom" / "crop"
    crop_uid = cropped_series(full, crop, **CT_CROP)
    orthanc, orthanc_url = start_orthanc(work)
    with orthanc:
        for path in sorted(full.glob("*.dcm")) + sorted(crop.glob("*.dcm")):
            response = requests.post(f"{orthanc_url}/instances", data=path.read_bytes(), timeout=60)
            assert response.status_code == 200, f"Orthanc refused {path}: {response.text[:1000]}"
        bundle = copy_bundle(BUNDLE, work / "bundles" / MODEL)
        app = make_monaibundle_app(work / "apps" / "monaibundle", {MODEL: bundle})
        server, url = start_monailabel(app, f"{orthanc_url}/dicom-web", [MODEL], work)
        with server:
            yield SimpleNamespace(
                url=url,
                orthanc=orthanc_url,
                bundle=bundle,
                work=work,
                log=server.log_path,
                full=full,
                full_uid=full_uid,
                crop=crop,
                crop_uid=crop_uid,
            )


def _dicom_series(folder: Path) -> tuple[np.ndarray, dict]:
    from monai_unet2.data import DicomSeriesReader

    reader = DicomSeriesReader()
    return reader.get_data(reader.read(folder))


def test_orthanc_refuses_the_committed_files_without_uids(pacs):
    """Why the PACS tests upload a copy: the committed files have empty Study/Series/SOP Instance UIDs."""
    response = requests.post(f"{pacs.orthanc}/instances", data=next(CT_SERIES.glob("*.dcm")).read_bytes(), timeout=60)
    assert response.status_code == 400
    assert "SOPInstanceUID" in response.json()["Details"]


def test_pacs_series_is_listed_and_fetched_on_the_ct_grid(pacs, tmp_path):
    assert requests.get(f"{pacs.url}/datastore/", timeout=60).json()["total"] == 2
    first = requests.post(f"{pacs.url}/activelearning/first", json={}, timeout=60).json()  # Slicer's "Next Sample"
    assert first["id"] in {pacs.full_uid, pacs.crop_uid}

    response = requests.get(f"{pacs.url}/datastore/image", params={"image": pacs.full_uid}, timeout=300)
    assert response.status_code == 200, f"{response.text[:500]}\n{server_error(pacs.log)}"
    fetched = _load_label(response.content, tmp_path / "fetched.nii.gz")
    volume, meta = _dicom_series(CT_SERIES)
    assert fetched.shape == volume.shape == (512, 512, 20)
    np.testing.assert_allclose(fetched.affine, meta["affine"], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(fetched.dataobj), volume)


def test_pacs_infer_label_lands_on_the_ct_grid(pacs, tmp_path):
    served = _served_label(pacs, MODEL, pacs.crop_uid, tmp_path / "served.nii.gz")
    volume, meta = _dicom_series(pacs.crop)
    assert served.shape == volume.shape == (CT_CROP["size"], CT_CROP["size"], 20)
    np.testing.assert_allclose(served.affine, meta["affine"], atol=1e-4)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(pacs.crop)))
    ct = reader.Execute()
    assert served.shape == ct.GetSize()
    last = [n - 1 for n in served.shape]
    for index in ([0, 0, 0], last, [last[0], 0, last[2] // 2], [0, last[1], 1]):
        x, y, z = ct.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(served.affine @ [*index, 1], [-x, -y, z, 1], atol=1e-3, err_msg=f"voxel {index}")

    # an MR model on a CT: MONAI Label hands the bundle a NIfTI, on which the modality guard can only warn (this
    # 64 x 64 crop lies inside the body, without air, so not even that); run directly on the DICOM it is forced
    np.testing.assert_array_equal(_voxels(served), bundle_prediction(pacs.bundle, pacs.crop, force_modality=True))
