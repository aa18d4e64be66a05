"""monai_unet2.tracking: MLflow run tracking, model registry and serving for the bundles.

- :func:`default_tracking_uri`, :func:`unique_run_name`: the tracking settings of ``train.json``.
- :class:`MLflowRun`: the one run of a training process, shared by its handlers and part of the training state:
  survives a dead server, marks dead runs, continues on resume, logs provenance and the bundle's configs.
- :class:`TrackedMLFlowHandler`: MONAI's ``MLFlowHandler`` logging into that run through its failure guard;
  :class:`PredictionPreview`: preview PNGs of validation predictions.
- :class:`WeightsGuard`: a training does not silently replace weights it did not write (the shipped ``model.pt``).
- :class:`RegisterBestModel`: best checkpoint → registry version, aliases ``champion`` / ``challenger``.
- :func:`load_model`, :func:`export_bundle`, :func:`local_weights`: registered versions back as a network, a bundle
  folder, or weights for ``CheckpointLoader``; :func:`seg_description`: what a DICOM SEG records about the model
  (bundle and registry version). ``python -m monai_unet2.tracking export-bundle URI DEST``.
"""

from .bundle_model import (
    build_inference_parser,
    download_bundle,
    export_bundle,
    is_mlflow_uri,
    load_model,
    local_weights,
    registered_version,
    seg_description,
    weights_origin,
)
from .mlflow_handler import TrackedMLFlowHandler
from .previews import PredictionPreview, render_preview
from .registry import CHALLENGER, CHAMPION, RegisterBestModel, assign_alias, register_bundle_version
from .run import MLflowRun
from .settings import (
    configure_http_client,
    dataset_digest,
    default_tracking_uri,
    git_commit,
    package_versions,
    read_bundle_version,
    unique_run_name,
)
from .weights import WeightsGuard, WeightsOverwriteError

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "MLflowRun",
    "PredictionPreview",
    "RegisterBestModel",
    "TrackedMLFlowHandler",
    "WeightsGuard",
    "WeightsOverwriteError",
    "assign_alias",
    "build_inference_parser",
    "configure_http_client",
    "dataset_digest",
    "default_tracking_uri",
    "download_bundle",
    "export_bundle",
    "git_commit",
    "is_mlflow_uri",
    "load_model",
    "local_weights",
    "package_versions",
    "read_bundle_version",
    "register_bundle_version",
    "registered_version",
    "render_preview",
    "seg_description",
    "unique_run_name",
    "weights_origin",
]
