"""Building blocks of the classic UNet (Ronneberger et al., MICCAI 2015): ``DoubleConv``, ``Down``, ``Up``, ``OutConv``.

The blocks are ``spatial_dims``-generic through MONAI's layer factories, so the same code builds the 2D network used
for 2D / 2.5D slice pipelines and a 3D network for volumes; activation, normalisation and dropout are MONAI layer
names (``get_act_layer`` / ``get_norm_layer`` / ``get_dropout_layer``), as in MONAI's ``BasicUNet``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_dropout_layer, get_norm_layer
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
    """(3×3 convolution → normalisation → activation) × 2, the basic UNet block, then optional dropout.

    With the defaults (batch norm, ReLU, no dropout) this is the classic block, and its layers keep the indices
    0-5 (conv, norm, act, conv, norm, act) whatever the options: without a normalisation an ``nn.Identity`` holds its
    place, and dropout comes last (index 6). So state dicts keep their parameter names (``inc.0.weight``, ...)
    across normalisations and with or without dropout. The convolutions have a bias only when no normalisation
    follows them (a normalisation removes the mean, and with it any bias).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels.
        mid_channels: output channels of the first convolution (input channels of the second); defaults to
            ``out_channels``. The bilinear UNet uses ``in_channels // 2`` in its up blocks.
        act: activation type and arguments, e.g. ``("relu", {"inplace": True})`` or ``("leakyrelu", {"negative_slope":
            0.1})`` (MONAI ``Act`` names).
        norm: normalisation type and arguments, e.g. ``"batch"``, ``"instance"``, ``("group", {"num_groups": 8})``
            (MONAI ``Norm`` names); ``None`` for none.
        dropout: dropout after the block: a probability or a MONAI ``Dropout`` type and arguments (elementwise,
            like ``BasicUNet``'s); ``None`` or 0 for none.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        dropout: float | tuple | None = None,
    ):
        mid_channels = out_channels if mid_channels is None else mid_channels
        conv_type = Conv[Conv.CONV, spatial_dims]
        with_norm = norm not in (None, "")

        def normalisation(channels: int) -> nn.Module:
            return get_norm_layer(norm, spatial_dims, channels) if with_norm else nn.Identity()  # type: ignore[arg-type]

        layers = [
            conv_type(in_channels, mid_channels, kernel_size=3, padding=1, bias=not with_norm),
            normalisation(mid_channels),
            get_act_layer(act),
            conv_type(mid_channels, out_channels, kernel_size=3, padding=1, bias=not with_norm),
            normalisation(out_channels),
            get_act_layer(act),
        ]
        if dropout:
            layers.append(get_dropout_layer(dropout, dropout_dim=1))
        super().__init__(*layers)


class Down(nn.Sequential):
    """2× max-pool (floor) followed by a :class:`DoubleConv`.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels.
        act: activation of the :class:`DoubleConv`.
        norm: normalisation of the :class:`DoubleConv`.
        dropout: dropout of the :class:`DoubleConv`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        dropout: float | tuple | None = None,
    ):
        super().__init__(
            Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2),
            DoubleConv(spatial_dims, in_channels, out_channels, act=act, norm=norm, dropout=dropout),
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
        act: activation of the :class:`DoubleConv`.
        norm: normalisation of the :class:`DoubleConv`.
        dropout: dropout of the :class:`DoubleConv`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        bilinear: bool = False,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        dropout: float | tuple | None = None,
    ):
        super().__init__()
        if bilinear:
            mode = "bilinear" if spatial_dims == 2 else "trilinear"
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode=mode, align_corners=True)
        else:
            self.up = Conv[Conv.CONVTRANS, spatial_dims](in_channels, in_channels // 2, kernel_size=2, stride=2)
        mid_channels = in_channels // 2 if bilinear else None
        self.conv = DoubleConv(
            spatial_dims, in_channels, out_channels, mid_channels, act=act, norm=norm, dropout=dropout
        )

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
