"""A registered model version as a MONAI bundle: stage it, download it, rebuild the network and the inference.

A registered version's artifacts are an MLflow pyfunc model whose ``artifacts/bundle/`` folder is a runnable bundle
(``configs/``, ``docs/``, ``LICENSE``, ``models/model.pt`` as a plain state dict). Everything here is rebuilt from
those JSON configs with ``monai.bundle.ConfigParser`` and ``torch.load(..., weights_only=True)``: no pickled Python
objects are loaded anywhere.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from monai_unet2.data.seg_description import SegDescription

from .settings import configure_http_client, read_bundle_version

__all__ = [
    "BUNDLE_ARTIFACT",
    "build_inference_parser",
    "download_bundle",
    "export_bundle",
    "is_mlflow_uri",
    "load_model",
    "local_weights",
    "registered_version",
    "seg_description",
    "stage_bundle",
    "weights_origin",
]

#: the name of the pyfunc artifact that holds the bundle folder (``<model>/artifacts/bundle``)
BUNDLE_ARTIFACT = "bundle"
_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
_FILE_LOADERS = {"LoadImaged", "LoadImage", "SafeLoadImaged", "SafeLoadImage"}
_downloads: dict[tuple[str, str | None], Path] = {}
_origins: dict[tuple[str, str | None], str] = {}


def is_mlflow_uri(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an MLflow model or artifact URI (``models:/``, ``runs:/``, ``mlflow-artifacts:/``)."""
    return str(path).startswith(_MLFLOW_SCHEMES)


def stage_bundle(
    bundle_root: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], destination: str | os.PathLike
) -> Path:
    """Write a runnable bundle folder: the bundle's ``configs/``, ``docs/``, ``LICENSE`` plus ``models/model.pt``.

    Args:
        bundle_root: the bundle being trained.
        state_dict: the weights to ship (a plain state dict, saved with ``torch.save``).
        destination: folder to create (must not exist).
    """
    source, target = Path(bundle_root), Path(destination)
    if not (source / "configs").is_dir():
        raise FileNotFoundError(f"{source}: not a bundle folder (no configs/).")
    target.mkdir(parents=True)
    shutil.copytree(source / "configs", target / "configs")
    if (source / "docs").is_dir():
        shutil.copytree(source / "docs", target / "docs")
    if (source / "LICENSE").is_file():
        shutil.copy2(source / "LICENSE", target / "LICENSE")
    (target / "models").mkdir()
    torch.save(dict(state_dict), target / "models" / "model.pt")
    return target


def registered_version(model_uri: str, tracking_uri: str | None = None) -> tuple[str, str] | None:
    """``(name, version)`` of the registered version behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``;
    ``None`` for other URIs.

    Args:
        model_uri: MLflow model URI.
        tracking_uri: tracking (and registry) URI; ``None`` uses ``MLFLOW_TRACKING_URI``.
    """
    if not model_uri.startswith("models:/"):
        return None
    reference = model_uri[len("models:/") :].strip("/")
    if "@" in reference:
        from mlflow import MlflowClient

        name, alias = reference.split("@", 1)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    if "/" in reference:
        name, version = reference.rsplit("/", 1)
        return name, version
    raise ValueError(f"{model_uri}: expected models:/<name>@<alias> or models:/<name>/<version>.")


def download_bundle(model_uri: str, tracking_uri: str | None = None) -> Path:
    """Download a registered version (``models:/<name>@champion``, ``models:/<name>/3``, ``runs:/...``) once per
    process and return its bundle folder.

    ``models:/`` URIs are resolved here with an explicit client rather than by MLflow, whose own resolution reads the
    process-wide registry URI: a bundle passes its ``tracking_uri`` without changing global MLflow state.

    An alias is resolved once: the version it named then is the one downloaded, and the one
    :func:`weights_origin` reports for the rest of the process.

    Args:
        model_uri: MLflow model URI.
        tracking_uri: tracking (and registry) URI; ``None`` uses ``MLFLOW_TRACKING_URI`` / MLflow's default.
    """
    import mlflow

    configure_http_client()
    key = (model_uri, tracking_uri)
    if key not in _downloads or not _downloads[key].is_dir():
        target = tempfile.mkdtemp(prefix="monai_unet2_model_")
        registered = registered_version(model_uri, tracking_uri)
        source = model_uri
        if registered is not None:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            source = client.get_model_version_download_uri(*registered)
            _origins[key] = f"models:/{registered[0]}/{registered[1]}"
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=target, tracking_uri=tracking_uri)
        )
        bundle = local / "artifacts" / BUNDLE_ARTIFACT
        if not (bundle / "configs" / "inference.json").is_file() or not (bundle / "models" / "model.pt").is_file():
            raise FileNotFoundError(
                f"{model_uri}: not a monai_unet2 bundle model (no artifacts/{BUNDLE_ARTIFACT}/configs/inference.json "
                f"and models/model.pt in {local})."
            )
        _downloads[key] = bundle
    return _downloads[key]


def weights_origin(ckpt_path: str | os.PathLike, tracking_uri: str | None = None) -> tuple[str | None, str | None]:
    """Where a bundle's weights come from: ``(bundle version, source)``.

    For a registry URI the weights are downloaded (once per process, shared with :func:`local_weights`): the bundle
    version is the one the registered bundle was trained as, the source the exact version
    (``models:/<name>/<version>``, an alias resolved). For a local file both are ``None`` (the bundle's own).

    Args:
        ckpt_path: a ``model.pt`` path or an MLflow model URI.
        tracking_uri: tracking/registry URI to resolve ``models:/`` against.
    """
    if not is_mlflow_uri(ckpt_path):
        return None, None
    bundle = download_bundle(str(ckpt_path), tracking_uri)
    origin = _origins.get((str(ckpt_path), tracking_uri), str(ckpt_path))
    return read_bundle_version(bundle), origin


def seg_description(
    bundle_root: str | os.PathLike, ckpt_path: str | os.PathLike, tracking_uri: str | None = None
) -> SegDescription:
    """What a bundle's DICOM SEG outputs record: the segment codes, colours and descriptions of its
    ``metadata.json`` and the algorithm: the bundle name and version, plus the registry version when the weights come
    from MLflow (AlgorithmVersion ``"0.1.0 (registered v3)"``, AlgorithmSource ``models:/<name>/3``).

    It lives here because only tracking knows which registry version ``--ckpt_path models:/<name>@champion`` is.
    Use in ``inference.json`` as ``"$monai_unet2.tracking.seg_description(@bundle_root, @ckpt_path, @tracking_uri)"``.

    Args:
        bundle_root: the bundle folder.
        ckpt_path: the weights (``@ckpt_path``): a file or an MLflow model URI.
        tracking_uri: tracking/registry URI.
    """
    from monai_unet2.bundle_config import read_metadata

    metadata = read_metadata(bundle_root)
    registered_bundle_version, source = weights_origin(ckpt_path, tracking_uri)
    version = str(metadata.get("version", ""))
    if source is not None and source.startswith("models:/"):
        version = f"{registered_bundle_version} (registered v{source.rsplit('/', 1)[-1]})"
    elif source is not None:
        version = f"{registered_bundle_version} ({source})"
    return SegDescription.from_metadata(metadata, algorithm_version=version, algorithm_source=source)


def local_weights(ckpt_path: str | os.PathLike, tracking_uri: str | None = None) -> str:
    """A local checkpoint path for ``CheckpointLoader``: an MLflow URI is downloaded, a file path returned as is.

    Use in ``inference.json`` as ``"load_path": "$monai_unet2.tracking.local_weights(@ckpt_path, @tracking_uri)"``
    so ``--ckpt_path models:/<bundle>@champion`` runs inference with the registered weights.

    Args:
        ckpt_path: a ``model.pt`` path or an MLflow model URI.
        tracking_uri: tracking/registry URI to resolve ``models:/`` against.
    """
    if not is_mlflow_uri(ckpt_path):
        return os.fspath(ckpt_path)
    return str(download_bundle(str(ckpt_path), tracking_uri) / "models" / "model.pt")


def _strip_file_io(parser: ConfigParser, section: str, drop: Any) -> None:
    transforms = parser.get(f"{section}#transforms")
    if isinstance(transforms, list):
        kept = [
            t for t in transforms if not (isinstance(t, dict) and drop(str(t.get("_target_", "")).rsplit(".", 1)[-1]))
        ]
        parser[f"{section}#transforms"] = kept


def build_inference_parser(bundle_dir: str | os.PathLike, device: str | torch.device = "cpu") -> ConfigParser:
    """The bundle's ``inference.json`` ready to evaluate on arrays instead of files.

    ``LoadImage(d)`` is removed from ``preprocessing`` (the caller provides the image as a ``MetaTensor``) and every
    ``Save*`` transform from ``postprocessing`` (the caller gets the label array back), as MONAI Label does with
    bundles. ``network_def``, ``preprocessing``, ``inferer`` and ``postprocessing`` are the ids to use; ``views`` (multi-view
    fusion) is emptied, since what is staged and served is the one network of ``models/model.pt``.

    Args:
        bundle_dir: a bundle folder with ``configs/inference.json``.
        device: device for ``@device``.
    """
    bundle_dir = Path(bundle_dir).resolve()
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    parser["device"] = f"$torch.device('{torch.device(device)}')"
    if parser.get("views") is not None:
        parser["views"] = {}
    _strip_file_io(parser, "preprocessing", lambda name: name in _FILE_LOADERS)
    _strip_file_io(parser, "postprocessing", lambda name: name.startswith("Save"))
    return parser


def _network_from_bundle(bundle_dir: Path, device: str | torch.device) -> torch.nn.Module:
    parser = build_inference_parser(bundle_dir, device)
    network = parser.get_parsed_content("network_def", instantiate=True)
    weights_file = bundle_dir / "models" / "model.pt"
    from monai_unet2.handlers.weights import load_weights  # torch.load(weights_only=True), errors naming the file

    state = load_weights(weights_file, map_location=torch.device(device))
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    network.load_state_dict(state)
    return network.to(device).eval()


def load_model(model_uri: str, tracking_uri: str | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``models:/<bundle>@champion`` → the bundle's ``network_def`` with the registered weights, in eval mode.

    The network is built from the registered bundle's ``inference.json`` and loaded from a plain state dict with
    ``torch.load(weights_only=True)``: nothing is unpickled. A local bundle folder works too.

    Args:
        model_uri: MLflow model URI (``models:/name@alias``, ``models:/name/<version>``, ``runs:/<id>/<path>``) or a
            local bundle folder.
        tracking_uri: tracking/registry URI; ``None`` uses ``MLFLOW_TRACKING_URI``.
        device: where to put the network.
    """
    bundle_dir = download_bundle(model_uri, tracking_uri) if is_mlflow_uri(model_uri) else Path(model_uri)
    return _network_from_bundle(bundle_dir, device)


def export_bundle(model_uri: str, destination: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """Turn a registered version back into a runnable bundle folder (configs, docs, LICENSE, ``models/model.pt``).

    Args:
        model_uri: MLflow model URI, e.g. ``models:/hippocampus_unet25d_segmentation@champion``.
        destination: folder to create; it must not exist or be empty.
        tracking_uri: tracking/registry URI; ``None`` uses ``MLFLOW_TRACKING_URI``.

    Returns:
        the bundle folder.
    """
    target = Path(destination)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target}: export destination exists and is not empty.")
    source = download_bundle(model_uri, tracking_uri)
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target
