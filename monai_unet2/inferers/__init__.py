"""monai_unet2.inferers: 2D / 2.5D sliding-window inference of 2D networks over 3D volumes, fold ensembles, mixed
precision and an optional OpenVINO backend."""

from monai_unet2.inferers.ensemble import FoldEnsembleInferer, fold_dir_name, trained_checkpoints
from monai_unet2.inferers.openvino_backend import OpenVINONetwork, inference_network, openvino_available
from monai_unet2.inferers.precision import AutocastInferer, cpu_supports_bf16, resolve_amp_dtype
from monai_unet2.inferers.slice_inferer import SlidingWindowSliceInferer

__all__ = [
    "AutocastInferer",
    "FoldEnsembleInferer",
    "OpenVINONetwork",
    "SlidingWindowSliceInferer",
    "cpu_supports_bf16",
    "fold_dir_name",
    "inference_network",
    "openvino_available",
    "resolve_amp_dtype",
    "trained_checkpoints",
]
