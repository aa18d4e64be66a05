"""monai_unet2.inferers: 2D / 2.5D sliding-window inference of 2D networks over 3D volumes, mixed precision."""

from monai_unet2.inferers.openvino_backend import OpenVINONetwork, openvino_available
from monai_unet2.inferers.precision import AutocastInferer, cpu_supports_bf16, resolve_amp_dtype
from monai_unet2.inferers.slice_inferer import SlidingWindowSliceInferer

__all__ = [
    "AutocastInferer",
    "OpenVINONetwork",
    "SlidingWindowSliceInferer",
    "cpu_supports_bf16",
    "openvino_available",
    "resolve_amp_dtype",
]
