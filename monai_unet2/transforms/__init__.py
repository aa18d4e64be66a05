"""monai_unet2.transforms."""
