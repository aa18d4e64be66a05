"""monai_unet2.inferers."""
