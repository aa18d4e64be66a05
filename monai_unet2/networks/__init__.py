"""monai_unet2.networks: the classic UNet and U²-Net, ``spatial_dims``-generic (2D / 2.5D / 3D), logits out."""

from monai_unet2.networks.u2net import U2Net
from monai_unet2.networks.unet import UNet

__all__ = ["U2Net", "UNet"]
