"""monai_unet2.networks."""
