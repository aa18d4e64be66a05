"""Dice + cross-entropy (MONAI ``DiceCELoss``) + boundary loss in one object, with the distance maps in the target."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss
from monai.networks import one_hot
from torch import nn
from torch.nn.modules.loss import _Loss

from monai_unet2.losses.boundary import boundary_term, distance_maps_from_target

__all__ = ["DiceCEBoundaryLoss"]


class DiceCEBoundaryLoss(_Loss):
    """``region_weight * (lambda_dice * Dice + lambda_ce * CE) + lambda_boundary * Boundary``.

    - Dice and CE: the parts of MONAI's :class:`~monai.losses.DiceCELoss` (``self.dice_ce``): its soft ``DiceLoss``
      (``include_background`` as in MONAI), its cross-entropy over all channels with ``softmax=True`` (multi-class)
      and its binary cross-entropy with logits with ``sigmoid=True`` (binary). Two details differ from calling
      ``DiceCELoss`` itself, both kept from this loss's first version (docs/losses.md, "Region terms"):

      * a multi-channel ``sigmoid`` output (multi-label) gets BCE per channel, channel 0 dropped when
        ``include_background=False``; ``DiceCELoss`` picks the criterion by channel count and would run a softmax
        cross-entropy over independent sigmoid channels;
      * ``ce_weight`` weights the cross-entropy only; ``DiceCELoss(weight=...)`` weights the Dice term too.

    - Boundary (Kervadec et al. 2019): mean over voxels of ``probability_c * phi_c`` over the foreground classes.
      The background channel never enters it: channel 0 of a softmax output is always dropped (its map would be
      minus the foreground's and count every boundary twice), and so is channel 0 of a multi-channel sigmoid output
      when ``include_background=False``. A single-channel sigmoid output is the foreground.

    How ``phi`` reaches the loss. ``monai.engines.SupervisedTrainer`` calls ``loss_function(pred, batch["label"])``
    and nothing else, so the distance maps travel in the target: the label channel(s) followed by the ``phi``
    channels, built in the training pipeline by ``SignedDistanceMapd`` (cached) and then MONAI's
    ``ConcatItemsd(keys=["label", "distance_map"], name="label", dim=0)``. The loss splits the target after
    ``label_channels`` channels (1 with ``to_onehot_y=True``, else N). This keeps the loss stateless (a side channel
    set by a handler would go stale and break under DDP or when the loss is called elsewhere), needs no custom
    ``prepare_batch``, and is plain bundle JSON. Training metrics computed on ``label`` must drop the extra
    channels in the train postprocessing (see docs/losses.md). A target without ``phi`` channels still works: the
    maps are then computed on the fly, on the CPU, on every call (with a one-time warning about the cost).
    MONAI's ``BoundaryLoss`` is not used for that reason: it recomputes the distance transform in every call.

    The loss is computed in float32 with autocast disabled, so it is finite under AMP (bfloat16 / float16 logits).
    The four weights are plain attributes; MONAI's ``ParamSchedulerHandler`` with
    :func:`~monai_unet2.losses.boundary_weight_setter` sets ``lambda_boundary`` (and ``region_weight``) each epoch.

    Args:
        include_background: include channel 0 in the Dice (and multi-channel BCE) terms, as MONAI's losses.
        to_onehot_y: the label part of the target is class indices ``(B, 1, *spatial)``; one-hot it to N classes.
        sigmoid: logits are independent per channel (binary, multi-label); CE term is BCE-with-logits.
        softmax: logits are a distribution over N >= 2 channels; CE term is cross-entropy.
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        lambda_boundary: boundary weight alpha (start small, e.g. 0.01, and let the schedule raise it).
        region_weight: factor on the two region terms (the schedule's ``rebalance`` sets it to ``1 - alpha``).
        label_channels: number of label channels at the front of the target; default 1 with ``to_onehot_y``, else N.
        spacing: voxel spacing for the on-the-fly fallback only (precomputed maps already carry it).
        smooth_nr: Dice numerator smoothing (MONAI ``DiceLoss``).
        smooth_dr: Dice denominator smoothing (MONAI ``DiceLoss``).
        squared_pred: squared terms in the Dice denominator (MONAI ``DiceLoss``).
        batch: Dice over the whole batch instead of per sample (MONAI ``DiceLoss``).
        ce_weight: per-class weights of the cross-entropy only: ``weight`` of the softmax cross-entropy (one per
            channel), ``pos_weight`` of the BCE (one per channel the BCE uses).
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        lambda_boundary: float = 0.01,
        region_weight: float = 1.0,
        label_channels: int | None = None,
        spacing: Sequence[float] | None = None,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        squared_pred: bool = False,
        batch: bool = False,
        ce_weight: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if sigmoid == softmax:
            raise ValueError(
                "DiceCEBoundaryLoss: set exactly one of sigmoid=True (binary / multi-label) or softmax=True."
            )
        if label_channels is not None and label_channels < 1:
            raise ValueError(f"DiceCEBoundaryLoss: label_channels must be at least 1, got {label_channels}.")
        if min(lambda_dice, lambda_ce, lambda_boundary, region_weight) < 0:
            raise ValueError("DiceCEBoundaryLoss: the weights must be non-negative.")
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.lambda_boundary = float(lambda_boundary)
        self.region_weight = float(region_weight)
        self.label_channels = label_channels
        self.spacing = spacing
        # only the parts are called (dice, ce, bce), weighted by this object's lambdas: see the class docstring
        self.dice_ce = DiceCELoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            squared_pred=squared_pred,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
        )
        if ce_weight is not None:
            weight = torch.as_tensor(ce_weight, dtype=torch.float32)
            self.dice_ce.cross_entropy = nn.CrossEntropyLoss(weight=weight)
            self.dice_ce.binary_cross_entropy = nn.BCEWithLogitsLoss(pos_weight=weight)
        self.last_terms: dict[str, torch.Tensor] = {}
        self._warned_on_the_fly = False

    def _split_target(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The label part (as given: class indices or one-hot) and the distance-map part of ``target``."""
        if target.dim() != input.dim():
            raise ValueError(
                f"DiceCEBoundaryLoss: target {tuple(target.shape)} must have the rank of the prediction "
                f"{tuple(input.shape)} (B, C, *spatial)."
            )
        if target.shape[2:] != input.shape[2:] or target.shape[0] != input.shape[0]:
            raise ValueError(
                f"DiceCEBoundaryLoss: target {tuple(target.shape)} and prediction {tuple(input.shape)} differ in "
                "batch or spatial size."
            )
        label_channels = self.label_channels or (1 if self.to_onehot_y else input.shape[1])
        if target.shape[1] < label_channels:
            raise ValueError(
                f"DiceCEBoundaryLoss: target has {target.shape[1]} channels, fewer than "
                f"label_channels={label_channels}."
            )
        label = target[:, :label_channels].float()
        expected = 1 if self.to_onehot_y and input.shape[1] > 1 else input.shape[1]
        if label.shape[1] != expected:
            raise ValueError(
                f"DiceCEBoundaryLoss: label has {label.shape[1]} channels, the prediction {input.shape[1]}; "
                "set to_onehot_y=True for a class-index label."
            )
        return label, target[:, label_channels:].float()

    def _foreground_channels(self, num_channels: int) -> slice:
        """Channels of the boundary term and of a multi-channel BCE: all but the background."""
        if self.softmax or (not self.include_background and num_channels > 1):
            return slice(1, None)
        return slice(0, None)

    def _cross_entropy(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Softmax cross-entropy on class indices, or BCE per foreground channel (MONAI ``DiceCELoss.ce`` / ``bce``)."""
        if self.softmax:
            class_indices = label if label.shape[1] == 1 else label.argmax(dim=1, keepdim=True)
            return self.dice_ce.ce(logits, class_indices)
        if label.shape[1] != logits.shape[1]:
            label = one_hot(label, num_classes=logits.shape[1], dim=1, dtype=torch.float32)
        channels = self._foreground_channels(logits.shape[1])
        # channels last, so that a per-channel pos_weight broadcasts over them; the mean is the same
        return self.dice_ce.bce(logits[:, channels].movedim(1, -1), label[:, channels].movedim(1, -1))

    def _distance_maps(self, distance_map: torch.Tensor, label: torch.Tensor, num_channels: int) -> torch.Tensor:
        """The maps carried in the target, or (fallback, slow) maps computed from the label, one per foreground class."""
        expected = len(range(num_channels)[self._foreground_channels(num_channels)])
        if distance_map.shape[1] == expected:
            return distance_map
        if distance_map.shape[1] != 0:
            raise ValueError(
                f"DiceCEBoundaryLoss: target carries {distance_map.shape[1]} distance-map channels, the "
                f"boundary term needs {expected} (one per foreground class; check SignedDistanceMapd's "
                "num_classes / include_background and label_channels)."
            )
        if not self._warned_on_the_fly:
            warnings.warn(
                "DiceCEBoundaryLoss: the target carries no signed distance maps, computing them on the CPU in every "
                "step (slow). Add SignedDistanceMapd + ConcatItemsd to the training transforms (docs/losses.md).",
                stacklevel=3,
            )
            self._warned_on_the_fly = True
        if label.shape[1] != num_channels:
            label = one_hot(label, num_classes=num_channels, dim=1, dtype=torch.float32)
        return distance_maps_from_target(label[:, self._foreground_channels(num_channels)], self.spacing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, N, *spatial)`` (2D or 3D), any floating dtype.
            target: ``(B, label_channels + K, *spatial)``: the label (class indices with ``to_onehot_y``, else
                one-hot / binary), optionally followed by the K signed distance maps of the boundary classes
                (K = N - 1 for softmax, N or N - 1 for sigmoid, see the class docstring).

        Returns:
            scalar loss (float32).
        """
        if self.softmax and input.shape[1] < 2:
            raise ValueError("DiceCEBoundaryLoss: softmax=True needs at least 2 output channels; use sigmoid=True.")
        # plain tensors: MetaTensor bookkeeping on every elementwise op costs time and carries nothing useful here
        input, target = input.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor)
        with torch.autocast(device_type=input.device.type, enabled=False):
            logits = input.float()
            label, distance_map = self._split_target(logits, target)
            dice = self.dice_ce.dice(logits, label)
            cross_entropy = self._cross_entropy(logits, label)
            total = self.region_weight * (self.lambda_dice * dice + self.lambda_ce * cross_entropy)
            boundary = torch.zeros((), device=logits.device)
            if self.lambda_boundary > 0:
                probabilities = torch.softmax(logits, dim=1) if self.softmax else torch.sigmoid(logits)
                channels = self._foreground_channels(logits.shape[1])
                distance_map = self._distance_maps(distance_map, label, logits.shape[1])
                boundary = boundary_term(probabilities[:, channels], distance_map)
                total = total + self.lambda_boundary * boundary
        self.last_terms = {"dice": dice.detach(), "ce": cross_entropy.detach(), "boundary": boundary.detach()}
        return total
