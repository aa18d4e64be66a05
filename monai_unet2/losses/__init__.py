"""monai_unet2.losses."""
