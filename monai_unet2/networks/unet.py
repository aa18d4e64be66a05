"""The classic UNet (Ronneberger et al., MICCAI 2015), four levels by default, with gradient checkpointing that works."""

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
    """Classic UNet: ``depth`` max-pool levels down, as many up levels with skip concatenation, a 1×1 logits head.

    The layout (widths ``features·2**level``, ``DoubleConv`` blocks, transposed-convolution or bilinear up-sampling)
    follows the widely used readable implementations, and gives their exact parameter counts at the defaults
    (``depth=4``, batch norm, ReLU, no dropout): 31,037,698 for 3 → 2 channels at ``features=64`` with transposed
    convolutions, 17,263,042 with ``bilinear=True``. MONAI's own :class:`monai.networks.nets.UNet` is a different
    network (strided convolutions, residual units, no full-resolution stage); this one is the original architecture.
    Activation, normalisation and dropout are MONAI layer names, as in :class:`monai.networks.nets.BasicUNet`.

    The modules are named ``inc``, ``down1`` .. ``down<depth>``, ``up1`` .. ``up<depth>``, ``outc``, and a block's
    layer indices do not depend on the normalisation or dropout (see :class:`DoubleConv`), so state dicts of
    the four-level network keep loading.

    Any input size works: the up-sampled maps are padded to their skip's size when pooling dropped a row or column.
    For 2.5D inputs use ``in_channels = (2 · context_slices + 1) · modalities``.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes, including background for a softmax output).
        features: width of the first level; level ``i`` has ``features · 2**i`` channels.
        bilinear: up-sample by interpolation (bilinear in 2D, trilinear in 3D) followed by convolutions, instead of
            transposed convolutions. The bottom level then has ``features · 2**depth // 2`` channels.
        checkpointing: recompute the encoder / decoder blocks' activations in backward (gradient checkpointing)
            instead of storing them. It keeps about a fifth of the activations for backward, costs about one more
            forward pass, and gives the same gradients. It acts only in training mode with gradients enabled.
        depth: number of down (and up) levels, at least 1; an input size divisible by ``2**depth`` needs no padding.
        act: activation type and arguments (MONAI ``Act``), e.g. ``("leakyrelu", {"negative_slope": 0.1})``.
        norm: normalisation type and arguments (MONAI ``Norm``), e.g. ``"instance"`` or ``("group", {"num_groups":
            8})``; ``None`` for none (the convolutions then get a bias).
        dropout: dropout at the end of every block: a probability or a MONAI ``Dropout`` type and arguments;
            ``None`` or 0 for none.

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
        depth: int = 4,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        dropout: float | tuple | None = None,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"UNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1 or out_channels < 1 or features < 1 or depth < 1:
            raise ValueError(
                f"UNet: in_channels, out_channels, features and depth must be positive, got {in_channels}, "
                f"{out_channels}, {features}, {depth}."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.bilinear = bilinear
        self.checkpointing = checkpointing
        self.depth = depth
        block = {"act": act, "norm": norm, "dropout": dropout}
        width = [features * 2**level for level in range(depth + 1)]
        # with interpolation the up-sampled map keeps its channels, so the bottom and each up block's output are
        # halved to make [skip, up-sampled] the width of the level again
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(spatial_dims, in_channels, width[0], **block)
        for level in range(1, depth + 1):
            out = width[level] // factor if level == depth else width[level]
            self.add_module(f"down{level}", Down(spatial_dims, width[level - 1], out, **block))
        for level in range(1, depth + 1):
            skip_level = depth - level
            out = width[skip_level] if skip_level == 0 else width[skip_level] // factor
            self.add_module(f"up{level}", Up(spatial_dims, width[skip_level + 1], out, bilinear, **block))
        self.outc = OutConv(spatial_dims, width[0], out_channels)

    @property
    def downs(self) -> list[nn.Module]:
        """The encoder levels ``down1`` .. ``down<depth>``, finest first."""
        return [getattr(self, f"down{level}") for level in range(1, self.depth + 1)]

    @property
    def ups(self) -> list[nn.Module]:
        """The decoder levels ``up1`` .. ``up<depth>``, coarsest first."""
        return [getattr(self, f"up{level}") for level in range(1, self.depth + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape (N, in_channels, *spatial) to logits of shape (N, out_channels, *spatial)."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"UNet: expected a {self.spatial_dims + 2}D input (N, C, *spatial) for spatial_dims="
                f"{self.spatial_dims}, got shape {tuple(x.shape)}."
            )
        run = self.checkpointing
        skips = [checkpointed_call(self.inc, x, enabled=run)]
        for down in self.downs:
            skips.append(checkpointed_call(down, skips[-1], enabled=run))
        x = skips.pop()
        for up, skip in zip(self.ups, reversed(skips)):
            x = checkpointed_call(up, x, skip, enabled=run)
        return self.outc(x)
