"""monai_unet2.inferers: 2D / 2.5D sliding-window inference of 2D networks over 3D volumes."""

from monai_unet2.inferers.slice_inferer import SlidingWindowSliceInferer

__all__ = ["SlidingWindowSliceInferer"]
