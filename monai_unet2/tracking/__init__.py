"""monai_unet2.tracking."""
