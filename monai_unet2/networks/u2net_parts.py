"""Residual U-blocks (RSU) of U²-Net (Qin et al., Pattern Recognition 2020): ``REBNConv``, ``RSU`` and ``RSUDilated``.

An RSU-L block is a small UNet of height L inside a residual connection: a stem convolution maps the input to
``out_channels``, the U-structure (L-2 max-pool levels plus a dilated bottom convolution) refines it, and the stem's
output is added back. ``RSUDilated`` (RSU-4F in the paper) replaces pooling by growing dilations (1, 2, 4, 8) for the
deepest, already low-resolution stages. MONAI has no such block, hence this module; the blocks are
``spatial_dims``-generic through MONAI's layer factories.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

__all__ = ["RSU", "CeilMaxPool", "REBNConv", "RSUDilated", "upsample_like"]


def upsample_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Resize ``x`` by (bi/tri)linear interpolation to the spatial size of ``reference``.

    The target size is read from ``reference``'s shape (not a scale factor), so maps produced by rounded-up
    pooling of odd sizes line up with their skips exactly, and ``torch.export`` keeps the sizes symbolic.

    Args:
        x: tensor of shape (N, C, *spatial) with 2 or 3 spatial dimensions.
        reference: tensor whose spatial sizes (``shape[2:]``) are the target.
    """
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=reference.shape[2:], mode=mode, align_corners=False)


class CeilMaxPool(nn.Module):
    """2× max-pooling that rounds the output size up (``ceil(n / 2)``), like ``MaxPool(2, 2, ceil_mode=True)``.

    The result is identical to PyTorch's ``ceil_mode=True`` pooling: a ``-inf`` row / column is appended, so for odd
    sizes the last window holds a single valid value. It is written out because ``torch.export`` cannot prove the
    guards that ``ceil_mode`` emits for symbolic sizes after several pooling levels, which would forbid exporting
    U²-Net with dynamic height and width; a pad computed from the shape followed by floor pooling exports cleanly.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
    """

    def __init__(self, spatial_dims: int):
        super().__init__()
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` of shape (N, C, *spatial) to (N, C, *ceil(spatial / 2))."""
        # one trailing -inf row / column in every dimension: floor pooling of n + 1 gives ceil(n / 2) windows, and
        # for even n the padded one is simply not visited.
        return self.pool(F.pad(x, [0, 1] * (x.ndim - 2), value=float("-inf")))


class REBNConv(nn.Sequential):
    """3×3 convolution (with bias, optionally dilated, "same" padding) → batch norm → ReLU.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels.
        dilation: dilation of the convolution; the padding equals it so the spatial size is kept.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilation: int = 1):
        super().__init__(
            Conv[Conv.CONV, spatial_dims](
                in_channels, out_channels, kernel_size=3, padding=dilation, dilation=dilation
            ),
            Norm[Norm.BATCH, spatial_dims](out_channels),
            nn.ReLU(inplace=True),
        )


class RSU(nn.Module):
    """Residual U-block RSU-L: stem, U-structure of height ``height`` with max-pooling, residual add of the stem.

    Encoder: ``height - 1`` convolutions, with a 2× max-pool (rounding up, so odd sizes survive) before all but
    the first; a bottom convolution with dilation 2 at the lowest resolution. Decoder: ``height - 1`` convolutions
    over the concatenation of the up-sampled deeper map and the encoder map of the same level; the last one maps
    back to ``out_channels`` for the residual add.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        height: L, the block height (7, 6, 5 and 4 in U²-Net), at least 3.
        in_channels: number of input channels.
        mid_channels: width inside the U-structure.
        out_channels: number of output channels.
    """

    def __init__(self, spatial_dims: int, height: int, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        if height < 3:
            raise ValueError(f"RSU: height must be at least 3, got {height}.")
        self.stem = REBNConv(spatial_dims, in_channels, out_channels)
        self.pool = CeilMaxPool(spatial_dims)
        self.encoder = nn.ModuleList(
            [REBNConv(spatial_dims, out_channels, mid_channels)]
            + [REBNConv(spatial_dims, mid_channels, mid_channels) for _ in range(height - 2)]
        )
        self.bottom = REBNConv(spatial_dims, mid_channels, mid_channels, dilation=2)
        self.decoder = nn.ModuleList(
            [REBNConv(spatial_dims, 2 * mid_channels, mid_channels) for _ in range(height - 2)]
            + [REBNConv(spatial_dims, 2 * mid_channels, out_channels)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``stem(x) + U(stem(x))``, same spatial size as ``x``."""
        stem = self.stem(x)
        skips = []
        hidden = stem
        for level, conv in enumerate(self.encoder):
            hidden = conv(hidden if level == 0 else self.pool(hidden))
            skips.append(hidden)
        hidden = self.bottom(hidden)
        for level, conv in enumerate(self.decoder):
            skip = skips[-1 - level]
            if level > 0:
                hidden = upsample_like(hidden, skip)
            hidden = conv(torch.cat([hidden, skip], dim=1))
        return hidden + stem


class RSUDilated(nn.Module):
    """Residual U-block RSU-4F: like RSU-4, but dilations 1, 2, 4 (encoder), 8 (bottom) replace pooling.

    Every map keeps the input's spatial size, which suits the deepest U²-Net stages where further pooling would
    leave too few pixels.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        mid_channels: width inside the U-structure.
        out_channels: number of output channels.
    """

    def __init__(self, spatial_dims: int, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.stem = REBNConv(spatial_dims, in_channels, out_channels)
        self.encoder = nn.ModuleList(
            [
                REBNConv(spatial_dims, out_channels, mid_channels, dilation=1),
                REBNConv(spatial_dims, mid_channels, mid_channels, dilation=2),
                REBNConv(spatial_dims, mid_channels, mid_channels, dilation=4),
            ]
        )
        self.bottom = REBNConv(spatial_dims, mid_channels, mid_channels, dilation=8)
        self.decoder = nn.ModuleList(
            [
                REBNConv(spatial_dims, 2 * mid_channels, mid_channels, dilation=4),
                REBNConv(spatial_dims, 2 * mid_channels, mid_channels, dilation=2),
                REBNConv(spatial_dims, 2 * mid_channels, out_channels, dilation=1),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``stem(x) + U(stem(x))``, same spatial size as ``x``."""
        stem = self.stem(x)
        skips = []
        hidden = stem
        for conv in self.encoder:
            hidden = conv(hidden)
            skips.append(hidden)
        hidden = self.bottom(hidden)
        for level, conv in enumerate(self.decoder):
            hidden = conv(torch.cat([hidden, skips[-1 - level]], dim=1))
        return hidden + stem
