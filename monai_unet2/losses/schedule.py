"""Epoch-wise schedule of the boundary-loss weight (Kervadec et al.): an ignite handler in MONAI's handler style."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["BoundaryWeightSchedule"]


def _find_weighted_loss(loss: Any) -> Any:
    """The object holding ``lambda_boundary``: the loss itself or a wrapped one (``DeepSupervisionLoss.loss``)."""
    current, seen = loss, set()
    while current is not None and id(current) not in seen:
        if hasattr(current, "lambda_boundary"):
            return current
        seen.add(id(current))
        current = getattr(current, "loss", None)
    raise TypeError(
        f"BoundaryWeightSchedule: {type(loss).__name__} has no 'lambda_boundary' attribute (nor a wrapped '.loss' "
        "with one); pass a DiceBCEBoundaryLoss or a DeepSupervisionLoss around one."
    )


class BoundaryWeightSchedule:
    """Set the boundary weight alpha at the start of every epoch: ``alpha = start + step * (epoch - 1)``, capped.

    The official schedule of the boundary loss starts at 0.01 and adds 0.01 per epoch; with ``rebalance=True`` the
    region terms get ``max(1 - alpha, region_floor)`` (``region_weight`` of the loss), so the boundary term can never
    swamp them completely. Alpha is derived from ``engine.state.epoch`` alone, so resuming a trainer from a
    checkpoint (``CheckpointLoader`` restores the epoch) restores it without any state of its own.

    Alpha is published as ``engine.state.metrics[metric_name]`` (default ``"boundary_weight"``), which MONAI's
    ``StatsHandler`` and ``MLFlowHandler`` log at every epoch end of the trainer, and as the attribute
    ``engine.state.boundary_weight`` (for their ``state_attributes``). Attach it to the trainer, e.g. in a bundle's
    ``train#handlers``::

        {"_target_": "monai_unet2.losses.BoundaryWeightSchedule", "loss": "@loss", "start": 0.01, "step": 0.01}

    Args:
        loss: ``DiceBCEBoundaryLoss`` or a wrapper (``DeepSupervisionLoss``) around one.
        start: alpha in epoch 1.
        step: increase per epoch.
        max_weight: cap on alpha (``None``: no cap; with ``rebalance`` alpha is always capped at 1).
        rebalance: also set the region weight to ``max(1 - alpha, region_floor)``.
        region_floor: lowest region weight when rebalancing.
        metric_name: key in ``engine.state.metrics`` (and name of the state attribute).
    """

    def __init__(
        self,
        loss: Any,
        start: float = 0.01,
        step: float = 0.01,
        max_weight: float | None = None,
        rebalance: bool = False,
        region_floor: float = 0.1,
        metric_name: str = "boundary_weight",
    ) -> None:
        if start < 0 or step < 0 or (max_weight is not None and max_weight < 0):
            raise ValueError("BoundaryWeightSchedule: start, step and max_weight must be non-negative.")
        if not 0 <= region_floor <= 1:
            raise ValueError(f"BoundaryWeightSchedule: region_floor must be in [0, 1], got {region_floor}.")
        self.loss = _find_weighted_loss(loss)
        self.start = float(start)
        self.step = float(step)
        self.max_weight = max_weight
        self.rebalance = rebalance
        self.region_floor = float(region_floor)
        self.metric_name = metric_name

    def weight_at(self, epoch: int) -> float:
        """Alpha in (1-based) ``epoch``."""
        alpha = self.start + self.step * max(epoch - 1, 0)
        if self.max_weight is not None:
            alpha = min(alpha, float(self.max_weight))
        if self.rebalance:
            alpha = min(alpha, 1.0)
        return alpha

    def region_weight_at(self, epoch: int) -> float:
        """Region weight in ``epoch``: ``max(1 - alpha, region_floor)`` with ``rebalance``, else 1."""
        return max(1.0 - self.weight_at(epoch), self.region_floor) if self.rebalance else 1.0

    def attach(self, engine: Engine) -> None:
        """Register the epoch-start update and the epoch-end publication on ``engine`` (a trainer)."""
        if not engine.has_event_handler(self.epoch_started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        if not engine.has_event_handler(self.publish, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.publish)

    def epoch_started(self, engine: Engine) -> None:
        """Set alpha (and the region weight) on the loss for ``engine.state.epoch``."""
        self.loss.lambda_boundary = self.weight_at(engine.state.epoch)
        if self.rebalance:
            self.loss.region_weight = self.region_weight_at(engine.state.epoch)
        self.publish(engine)

    def publish(self, engine: Engine) -> None:
        """Put the current alpha where MONAI's StatsHandler / MLFlowHandler read it."""
        engine.state.metrics[self.metric_name] = self.loss.lambda_boundary
        setattr(engine.state, self.metric_name, self.loss.lambda_boundary)

    def __call__(self, engine: Engine) -> None:
        self.epoch_started(engine)
