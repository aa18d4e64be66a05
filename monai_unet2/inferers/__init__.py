"""monai_unet2.inferers: 2D / 2.5D sliding-window inference of 2D networks over 3D volumes, and fold ensembles."""

from monai_unet2.inferers.ensemble import FoldEnsembleInferer, fold_dir_name, trained_checkpoints
from monai_unet2.inferers.slice_inferer import SlidingWindowSliceInferer

__all__ = ["FoldEnsembleInferer", "SlidingWindowSliceInferer", "fold_dir_name", "trained_checkpoints"]
