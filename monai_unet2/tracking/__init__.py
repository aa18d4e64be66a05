"""monai_unet2.tracking: MLflow run tracking, model registry and serving for the bundles.

- :func:`default_tracking_uri`, :func:`unique_run_name`: the tracking settings of ``train.json``.
- :class:`TrackedMLFlowHandler`: MONAI's ``MLFlowHandler`` that survives a dead server, marks dead runs, logs
  provenance and the resolved config; :class:`PredictionPreview`: preview PNGs of validation predictions.
- :class:`RegisterBestModel`: best checkpoint → registry version, aliases ``champion`` / ``challenger``.
- :func:`load_model`, :func:`export_bundle`, :func:`local_weights`: registered versions back as a network, a bundle
  folder, or weights for ``CheckpointLoader``. ``python -m monai_unet2.tracking export-bundle URI DEST``.
"""

from .bundle_model import (
    build_inference_parser,
    download_bundle,
    export_bundle,
    is_mlflow_uri,
    load_model,
    local_weights,
)
from .config_snapshot import active_config_parser, config_snapshot
from .handlers import TrackedMLFlowHandler
from .previews import PredictionPreview, render_preview
from .registry import CHALLENGER, CHAMPION, RegisterBestModel, assign_alias, register_bundle_version
from .settings import (
    configure_http_client,
    dataset_digest,
    default_tracking_uri,
    git_commit,
    package_versions,
    read_bundle_version,
    unique_run_name,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PredictionPreview",
    "RegisterBestModel",
    "TrackedMLFlowHandler",
    "active_config_parser",
    "assign_alias",
    "build_inference_parser",
    "config_snapshot",
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
    "render_preview",
    "unique_run_name",
]
