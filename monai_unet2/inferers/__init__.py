"""monai_unet2.inferers: 2D / 2.5D sliding-window inference of 2D networks over 3D volumes, fold ensembles,
multi-view fusion, mixed precision and an optional OpenVINO backend."""

from monai_unet2.inferers.ensemble import FoldEnsembleInferer, fold_dir_name, trained_checkpoints
from monai_unet2.inferers.multi_view import MultiViewInferer, check_views, views_that_fit
from monai_unet2.inferers.openvino_backend import OpenVINONetwork, inference_network, openvino_available
from monai_unet2.inferers.precision import AutocastInferer, cpu_supports_bf16, resolve_amp_dtype
from monai_unet2.inferers.slice_inferer import SlidingWindowSliceInferer

__all__ = [
    "AutocastInferer",
    "FoldEnsembleInferer",
    "MultiViewInferer",
    "OpenVINONetwork",
    "SlidingWindowSliceInferer",
    "check_views",
    "cpu_supports_bf16",
    "fold_dir_name",
    "inference_network",
    "openvino_available",
    "resolve_amp_dtype",
    "trained_checkpoints",
    "views_that_fit",
]
