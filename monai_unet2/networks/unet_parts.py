"""Building blocks of the classic UNet (Ronneberger et al., MICCAI 2015): ``DoubleConv``, ``Down``, ``Up``, ``OutConv``.

The blocks are ``spatial_dims``-generic through MONAI's layer factories, so the same code builds the 2D network used
for 2D / 2.5D slice pipelines and a 3D network for volumes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

__all__ = ["DoubleConv", "Down", "OutConv", "Up", "pad_to_match"]


def pad_to_match(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Zero-pad the spatial dimensions of ``x`` at both ends so that they match those of ``reference``.

    After floor max-pooling an odd size ``n`` becomes ``n // 2`` and up-sampling gives ``n - 1``; the missing row /
    column is added here, half before and half after, as in the classic implementations. The widths are computed
    per dimension from *both* tensors (a classic bug computes them from the same tensor and always pads 0), and from
    shapes only, so ``torch.export`` can keep the spatial sizes symbolic.

    Args:
        x: tensor of shape (N, C, *spatial), each spatial size at most that of ``reference``.
        reference: tensor of shape (N, C', *spatial_ref) whose spatial sizes ``x`` is padded to.
    """
    pads: list = []
    # F.pad takes (before, after) pairs starting from the last dimension.
    for dim in reversed(range(2, x.ndim)):
        diff = reference.shape[dim] - x.shape[dim]
        pads += [diff // 2, diff - diff // 2]
    return F.pad(x, pads)


class DoubleConv(nn.Sequential):
    """(3×3 convolution → batch norm → ReLU) × 2, the basic UNet block; convolutions have no bias (BN follows).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels.
        mid_channels: output channels of the first convolution (input channels of the second); defaults to
            ``out_channels``. The bilinear UNet uses ``in_channels // 2`` in its up blocks.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, mid_channels: int | None = None):
        mid_channels = out_channels if mid_channels is None else mid_channels
        conv_type = Conv[Conv.CONV, spatial_dims]
        norm_type = Norm[Norm.BATCH, spatial_dims]
        super().__init__(
            conv_type(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            norm_type(mid_channels),
            nn.ReLU(inplace=True),
            conv_type(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm_type(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2× max-pool (floor) followed by a :class:`DoubleConv`.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__(
            Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2),
            DoubleConv(spatial_dims, in_channels, out_channels),
        )


class Up(nn.Module):
    """2× up-sampling of the deeper feature map, padding to the skip's size, concatenation with the skip, DoubleConv.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: channels of the concatenation ``[skip, up-sampled]`` that enters the DoubleConv.
        out_channels: number of output channels.
        bilinear: if True, up-sample by (bi/tri)linear interpolation (no parameters; the deeper map then already has
            ``in_channels // 2`` channels) and use ``in_channels // 2`` middle channels in the DoubleConv; if False,
            use a stride-2 transposed convolution from ``in_channels`` to ``in_channels // 2``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, bilinear: bool = False):
        super().__init__()
        if bilinear:
            mode = "bilinear" if spatial_dims == 2 else "trilinear"
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode=mode, align_corners=True)
            self.conv = DoubleConv(spatial_dims, in_channels, out_channels, in_channels // 2)
        else:
            self.up = Conv[Conv.CONVTRANS, spatial_dims](in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(spatial_dims, in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Up-sample ``x`` (the deeper map), pad it to ``skip``'s spatial size, concatenate ``[skip, x]``, convolve."""
        x = pad_to_match(self.up(x), skip)
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Sequential):
    """1×1 convolution to the number of classes (logits, no activation).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__(Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1))
