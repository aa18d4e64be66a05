"""Dice + cross-entropy + boundary loss in one object, with the distance maps carried by the target."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks import one_hot
from torch.nn.modules.loss import _Loss

from monai_unet2.losses.boundary import boundary_term, distance_maps_from_target

__all__ = ["DiceBCEBoundaryLoss"]


class DiceBCEBoundaryLoss(_Loss):
    """``region_weight * (lambda_dice * Dice + lambda_ce * CE) + lambda_boundary * Boundary``.

    - Dice: MONAI's soft ``DiceLoss`` (``include_background`` as in MONAI).
    - CE: cross-entropy over all channels with ``softmax=True`` (multi-class), binary cross-entropy with logits with
      ``sigmoid=True`` (binary / multi-label; channel 0 dropped when ``include_background=False`` and N > 1).
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

    The loss is computed in float32 with autocast disabled, so it is finite under AMP (bfloat16 / float16 logits).
    ``lambda_boundary`` and ``region_weight`` are plain attributes: ``BoundaryWeightSchedule`` sets them each epoch.

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
        ce_weight: per-class weights for the cross-entropy (``weight`` of ``F.cross_entropy``, ``pos_weight``
            of ``F.binary_cross_entropy_with_logits``), one value per channel the CE term uses.
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
                "DiceBCEBoundaryLoss: set exactly one of sigmoid=True (binary / multi-label) or softmax=True."
            )
        if label_channels is not None and label_channels < 1:
            raise ValueError(f"DiceBCEBoundaryLoss: label_channels must be at least 1, got {label_channels}.")
        if min(lambda_dice, lambda_ce, lambda_boundary, region_weight) < 0:
            raise ValueError("DiceBCEBoundaryLoss: the weights must be non-negative.")
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
        self.dice = DiceLoss(
            include_background=include_background,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            squared_pred=squared_pred,
            batch=batch,
        )
        ce_weight_tensor = None if ce_weight is None else torch.as_tensor(ce_weight, dtype=torch.float32)
        self.register_buffer("ce_weight", ce_weight_tensor, persistent=False)
        self.last_terms: dict[str, torch.Tensor] = {}
        self._warned_on_the_fly = False

    def _split_target(
        self, input: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        n_pred = input.shape[1]
        if target.dim() != input.dim():
            raise ValueError(
                f"DiceBCEBoundaryLoss: target {tuple(target.shape)} must have the rank of the prediction "
                f"{tuple(input.shape)} (B, C, *spatial)."
            )
        if target.shape[2:] != input.shape[2:] or target.shape[0] != input.shape[0]:
            raise ValueError(
                f"DiceBCEBoundaryLoss: target {tuple(target.shape)} and prediction {tuple(input.shape)} differ in "
                "batch or spatial size."
            )
        label_channels = self.label_channels or (1 if self.to_onehot_y else n_pred)
        if target.shape[1] < label_channels:
            raise ValueError(
                f"DiceBCEBoundaryLoss: target has {target.shape[1]} channels, fewer than "
                f"label_channels={label_channels}."
            )
        label = target[:, :label_channels]
        class_indices = None
        if self.to_onehot_y and n_pred > 1:
            class_indices = label.long()
            one_hot_label = one_hot(class_indices, num_classes=n_pred, dim=1, dtype=torch.float32)
            class_indices = class_indices[:, 0]
        else:
            one_hot_label = label.float()
        if one_hot_label.shape[1] != n_pred:
            raise ValueError(
                f"DiceBCEBoundaryLoss: label has {one_hot_label.shape[1]} channels, the prediction {n_pred}; "
                "set to_onehot_y=True for a class-index label."
            )
        return one_hot_label, class_indices, target[:, label_channels:].float()

    def _boundary_channels(self, n_pred: int) -> slice:
        if self.softmax or (not self.include_background and n_pred > 1):
            return slice(1, None)
        return slice(0, None)

    def _cross_entropy(
        self, logits: torch.Tensor, one_hot_label: torch.Tensor, class_indices: torch.Tensor | None
    ) -> torch.Tensor:
        if self.softmax:
            if class_indices is None:
                class_indices = one_hot_label.argmax(dim=1)
            weight = None if self.ce_weight is None else self.ce_weight.to(logits.device)
            return F.cross_entropy(logits, class_indices, weight=weight)
        channels = self._boundary_channels(logits.shape[1])
        pos_weight = None
        if self.ce_weight is not None:
            pos_weight = self.ce_weight.to(logits.device).view(-1, *([1] * (logits.dim() - 2)))
        return F.binary_cross_entropy_with_logits(
            logits[:, channels], one_hot_label[:, channels], pos_weight=pos_weight
        )

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
            raise ValueError("DiceBCEBoundaryLoss: softmax=True needs at least 2 output channels; use sigmoid=True.")
        # plain tensors: MetaTensor bookkeeping on every elementwise op costs time and carries nothing useful here
        input, target = input.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor)
        with torch.autocast(device_type=input.device.type, enabled=False):
            logits = input.float()
            one_hot_label, class_indices, distance_map = self._split_target(logits, target)
            probabilities = torch.softmax(logits, dim=1) if self.softmax else torch.sigmoid(logits)
            dice = self.dice(probabilities, one_hot_label)
            cross_entropy = self._cross_entropy(logits, one_hot_label, class_indices)
            total = self.region_weight * (self.lambda_dice * dice + self.lambda_ce * cross_entropy)
            boundary = torch.zeros((), device=logits.device)
            if self.lambda_boundary > 0:
                channels = self._boundary_channels(logits.shape[1])
                probabilities = probabilities[:, channels]
                if distance_map.shape[1] == 0:
                    if not self._warned_on_the_fly:
                        warnings.warn(
                            "DiceBCEBoundaryLoss: the target carries no signed distance maps, computing them on the "
                            "CPU in every step (slow). Add SignedDistanceMapd + ConcatItemsd to the training "
                            "transforms (docs/losses.md).",
                            stacklevel=2,
                        )
                        self._warned_on_the_fly = True
                    distance_map = distance_maps_from_target(one_hot_label[:, channels], self.spacing)
                elif distance_map.shape[1] != probabilities.shape[1]:
                    raise ValueError(
                        f"DiceBCEBoundaryLoss: target carries {distance_map.shape[1]} distance-map channels, the "
                        f"boundary term needs {probabilities.shape[1]} (one per foreground class; check "
                        "SignedDistanceMapd's num_classes / include_background and label_channels)."
                    )
                boundary = boundary_term(probabilities, distance_map)
                total = total + self.lambda_boundary * boundary
        self.last_terms = {"dice": dice.detach(), "ce": cross_entropy.detach(), "boundary": boundary.detach()}
        return total
