"""U²-Net (Qin et al., "U²-Net: Going deeper with nested U-structure for salient object detection", PR 2020)."""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from monai_unet2.networks.u2net_parts import RSU, CeilMaxPool, RSUDilated, upsample_like

__all__ = ["U2Net"]

# (RSU height or None for RSU-4F, in_channels, mid_channels, out_channels); "in" of the first stage is the input.
_FULL_ENCODER = [(7, None, 32, 64), (6, 64, 32, 128), (5, 128, 64, 256), (4, 256, 128, 512), (None, 512, 256, 512),
                 (None, 512, 256, 512)]  # fmt: skip
_FULL_DECODER = [(None, 1024, 256, 512), (4, 1024, 128, 256), (5, 512, 64, 128), (6, 256, 32, 64), (7, 128, 16, 64)]
_SMALL_ENCODER = [(7, None, 16, 64), (6, 64, 16, 64), (5, 64, 16, 64), (4, 64, 16, 64), (None, 64, 16, 64),
                  (None, 64, 16, 64)]  # fmt: skip
_SMALL_DECODER = [(None, 128, 16, 64), (4, 128, 16, 64), (5, 128, 16, 64), (6, 128, 16, 64), (7, 128, 16, 64)]
_VARIANTS = {"full": (_FULL_ENCODER, _FULL_DECODER), "small": (_SMALL_ENCODER, _SMALL_DECODER)}


def _rsu(spatial_dims: int, height: int | None, in_channels: int, mid_channels: int, out_channels: int) -> nn.Module:
    if height is None:
        return RSUDilated(spatial_dims, in_channels, mid_channels, out_channels)
    return RSU(spatial_dims, height, in_channels, mid_channels, out_channels)


class U2Net(nn.Module):
    """U²-Net: a six-stage UNet whose stages are residual U-blocks, with six side outputs and a fused output.

    Encoder stages En_1..En_6 are RSU-7, RSU-6, RSU-5, RSU-4, RSU-4F, RSU-4F with 2× max-pooling (sizes rounded up)
    between them; the decoder stages De_5..De_1 mirror them and take the concatenation of the up-sampled deeper
    stage and the encoder stage of the same level. Each of De_1..De_5 and En_6 feeds a 3×3 side convolution to
    ``out_channels``, up-sampled to the input size; a 1×1 convolution over the six side maps gives the fused output.
    The ``"full"`` variant (U2NET, 44,009,869 parameters for 3 → 1 channels) and the ``"small"`` one (U2NETP,
    1,131,181) match the reference implementation's parameter counts exactly.

    All outputs are logits (no sigmoid / softmax): apply the activation in the loss or post-processing.

    Output form:

    - evaluation mode, or ``deep_supervision=False``: one tensor, the fused output, (N, out_channels, *spatial).
    - training mode with ``deep_supervision=True``: a ``list`` of 7 tensors, all (N, out_channels, *spatial):
      ``[fused, side_1, ..., side_6]`` (side_1 is the finest). This is the form
      :class:`monai.losses.DeepSupervisionLoss` consumes; the paper's loss weights all seven equally
      (``DeepSupervisionLoss(loss, weight_mode="same")``).

    Any input size works (odd sizes included). For 2.5D inputs use ``in_channels = (2 · context_slices + 1) ·
    modalities``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (1 for a binary sigmoid output, or the number of classes).
        variant: ``"full"`` (U2NET, 44 M parameters) or ``"small"`` (U2NETP, 1.1 M parameters).
        deep_supervision: in training mode return the fused output and the six side outputs (see above).

    Example::

        net = U2Net(spatial_dims=2, in_channels=3, out_channels=1, variant="small", deep_supervision=True)
        outputs = net(torch.randn(2, 3, 320, 320))  # training mode: list of 7 tensors (2, 1, 320, 320)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        variant: str = "full",
        deep_supervision: bool = False,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"U2Net: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if variant not in _VARIANTS:
            raise ValueError(f"U2Net: variant must be one of {sorted(_VARIANTS)}, got {variant!r}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"U2Net: in_channels and out_channels must be positive, got {in_channels}, {out_channels}."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.variant = variant
        self.deep_supervision = deep_supervision
        encoder_config, decoder_config = _VARIANTS[variant]
        self.pool = CeilMaxPool(spatial_dims)
        self.encoder = nn.ModuleList(
            [
                _rsu(spatial_dims, height, in_channels if stage_in is None else stage_in, mid, out)
                for height, stage_in, mid, out in encoder_config
            ]
        )
        self.decoder = nn.ModuleList([_rsu(spatial_dims, *config) for config in decoder_config])
        # side i (1 = finest) reads De_i for i <= 5 and En_6 for i = 6.
        side_channels = [config[3] for config in reversed(decoder_config)] + [encoder_config[-1][3]]
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.sides = nn.ModuleList([conv_type(c, out_channels, kernel_size=3, padding=1) for c in side_channels])
        self.fuse = conv_type(len(side_channels) * out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Return the fused logits, or ``[fused, side_1, ..., side_6]`` in training with deep supervision."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"U2Net: expected a {self.spatial_dims + 2}D input (N, C, *spatial) for spatial_dims="
                f"{self.spatial_dims}, got shape {tuple(x.shape)}."
            )
        encoded = []
        hidden = x
        for stage, block in enumerate(self.encoder):
            hidden = block(hidden if stage == 0 else self.pool(hidden))
            encoded.append(hidden)
        stage_maps = [hidden]  # En_6, then De_5 ... De_1
        for level, block in enumerate(self.decoder):
            skip = encoded[-2 - level]
            hidden = block(torch.cat([upsample_like(hidden, skip), skip], dim=1))
            stage_maps.append(hidden)
        # sides in order 1..6: De_1, De_2, ..., De_5, En_6
        sides = [upsample_like(conv(feature), x) for conv, feature in zip(self.sides, reversed(stage_maps))]
        fused = self.fuse(torch.cat(sides, dim=1))
        if self.training and self.deep_supervision:
            return [fused, *sides]
        return fused
