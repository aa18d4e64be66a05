"""The classic UNet (Ronneberger et al., MICCAI 2015), four-level layout, with gradient checkpointing that works."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from monai_unet2.networks.unet_parts import DoubleConv, Down, OutConv, Up

__all__ = ["UNet", "checkpointed_call"]


@contextmanager
def _frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Keep the running statistics of every batch-norm layer in ``module`` unchanged while the context is active.

    Activation checkpointing runs a block's forward a second time during backward. In training mode batch norm would
    then update its running mean / variance (and ``num_batches_tracked``) twice per step, so a checkpointed model
    would drift away from the plain one at evaluation time. The recomputation normalises with the batch statistics
    either way, so freezing the running statistics changes neither outputs nor gradients.
    """
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, tracked) in zip(norms, saved):
            norm.momentum = momentum
            if tracked is not None:
                norm.num_batches_tracked.copy_(tracked)


def checkpointed_call(block: nn.Module, *inputs: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """Call ``block(*inputs)``, with activation checkpointing when it can save memory.

    Checkpointing (``torch.utils.checkpoint.checkpoint``, non-reentrant) keeps only the block's inputs during the
    forward pass and recomputes its activations in backward. It is used only when ``enabled``, the block is in
    training mode and autograd is recording: in evaluation or under ``torch.no_grad()`` there is nothing to save.
    Batch-norm running statistics are frozen during the recomputation (see :func:`_frozen_batchnorm_statistics`).

    Args:
        block: the module to run.
        inputs: its positional inputs.
        enabled: whether checkpointing is requested.
    """
    if not (enabled and block.training and torch.is_grad_enabled()):
        return block(*inputs)
    contexts: Callable = lambda: (nullcontext(), _frozen_batchnorm_statistics(block))  # noqa: E731
    return checkpoint(block, *inputs, use_reentrant=False, context_fn=contexts)


class UNet(nn.Module):
    """Classic UNet: four max-pool levels down, four up levels with skip concatenation, a 1×1 head producing logits.

    The layout (widths ``features·{1, 2, 4, 8, 16}``, ``DoubleConv`` blocks, transposed-convolution or bilinear
    up-sampling) follows the widely used readable implementations, and gives their exact parameter counts:
    31,037,698 for 3 → 2 channels at ``features=64`` with transposed convolutions, 17,263,042 with
    ``bilinear=True``. MONAI's own :class:`monai.networks.nets.UNet` is a different network (strided convolutions,
    residual units, no full-resolution stage); this one is the original architecture.

    Any input size works: the up-sampled maps are padded to their skip's size when pooling dropped a row or column.
    For 2.5D inputs use ``in_channels = (2 · context_slices + 1) · modalities``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes, including background for a softmax output).
        features: width of the first level; level ``i`` has ``features · 2**i`` channels.
        bilinear: up-sample by interpolation (bilinear in 2D, trilinear in 3D) followed by convolutions, instead of
            transposed convolutions. The bottom level then has ``features · 16 // 2`` channels.
        checkpointing: recompute the encoder / decoder blocks' activations in backward (gradient checkpointing)
            instead of storing them. It keeps about a fifth of the activations for backward, costs about one more
            forward pass, and gives the same gradients. It acts only in training mode with gradients enabled.

    Example::

        net = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32)  # 2.5D: 5 adjacent slices
        logits = net(torch.randn(2, 5, 256, 256))  # (2, 3, 256, 256)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: int = 64,
        bilinear: bool = False,
        checkpointing: bool = False,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"UNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1 or out_channels < 1 or features < 1:
            raise ValueError(
                f"UNet: in_channels, out_channels and features must be positive, got {in_channels}, "
                f"{out_channels}, {features}."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.bilinear = bilinear
        self.checkpointing = checkpointing
        f = features
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(spatial_dims, in_channels, f)
        self.down1 = Down(spatial_dims, f, 2 * f)
        self.down2 = Down(spatial_dims, 2 * f, 4 * f)
        self.down3 = Down(spatial_dims, 4 * f, 8 * f)
        self.down4 = Down(spatial_dims, 8 * f, 16 * f // factor)
        self.up1 = Up(spatial_dims, 16 * f, 8 * f // factor, bilinear)
        self.up2 = Up(spatial_dims, 8 * f, 4 * f // factor, bilinear)
        self.up3 = Up(spatial_dims, 4 * f, 2 * f // factor, bilinear)
        self.up4 = Up(spatial_dims, 2 * f, f, bilinear)
        self.outc = OutConv(spatial_dims, f, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape (N, in_channels, *spatial) to logits of shape (N, out_channels, *spatial)."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"UNet: expected a {self.spatial_dims + 2}D input (N, C, *spatial) for spatial_dims="
                f"{self.spatial_dims}, got shape {tuple(x.shape)}."
            )
        run = self.checkpointing
        x1 = checkpointed_call(self.inc, x, enabled=run)
        x2 = checkpointed_call(self.down1, x1, enabled=run)
        x3 = checkpointed_call(self.down2, x2, enabled=run)
        x4 = checkpointed_call(self.down3, x3, enabled=run)
        x5 = checkpointed_call(self.down4, x4, enabled=run)
        x = checkpointed_call(self.up1, x5, x4, enabled=run)
        x = checkpointed_call(self.up2, x, x3, enabled=run)
        x = checkpointed_call(self.up3, x, x2, enabled=run)
        x = checkpointed_call(self.up4, x, x1, enabled=run)
        return self.outc(x)
