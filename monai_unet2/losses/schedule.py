"""Boundary-weight schedule (Kervadec et al.): a setter for MONAI's ``ParamSchedulerHandler``, and its epoch metric.

MONAI's ``ParamSchedulerHandler`` does the scheduling (``value_calculator="linear"``, ``epoch_level=True``); this
module adds what it cannot know: which attributes of which loss to set (:func:`boundary_weight_setter`), and how to
report the value it set as a trainer metric (:class:`BoundaryWeightMetric`; the handler only passes the value to
the setter, which never sees the engine). docs/losses.md has the bundle snippet.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["BoundaryWeightMetric", "boundary_weight_setter"]


def _weighted_loss(loss: Any) -> Any:
    """The object holding ``lambda_boundary``: ``loss`` itself or a wrapped one (``DeepSupervisionLoss.loss``).

    Args:
        loss: ``DiceCEBoundaryLoss`` or a wrapper with a ``.loss`` attribute around one.
    """
    current, seen = loss, set()
    while current is not None and id(current) not in seen:
        if hasattr(current, "lambda_boundary"):
            return current
        seen.add(id(current))
        current = getattr(current, "loss", None)
    raise TypeError(
        f"{type(loss).__name__} has no 'lambda_boundary' attribute (nor a wrapped '.loss' with one); pass a "
        "DiceCEBoundaryLoss or a DeepSupervisionLoss around one."
    )


def _set_boundary_weight(loss: Any, value: float, rebalance: bool, min_region_weight: float) -> None:
    if value < 0:
        raise ValueError(f"boundary weight must be non-negative, the schedule gave {value}.")
    alpha = min(float(value), 1.0) if rebalance else float(value)
    loss.lambda_boundary = alpha
    if rebalance:
        loss.region_weight = max(1.0 - alpha, min_region_weight)


def boundary_weight_setter(
    loss: Any, rebalance: bool = False, min_region_weight: float = 0.1
) -> Callable[[float], None]:
    """The ``parameter_setter`` of a ``ParamSchedulerHandler`` that schedules the boundary weight alpha of ``loss``.

    The returned callable sets ``lambda_boundary = value``; with ``rebalance`` it caps alpha at 1 and also sets
    ``region_weight = max(1 - alpha, min_region_weight)``, so the boundary term never swamps the region terms.

    Args:
        loss: ``DiceCEBoundaryLoss``, or a ``DeepSupervisionLoss`` around one (``.loss`` is unwrapped).
        rebalance: also scale the region terms by ``1 - alpha``.
        min_region_weight: lowest region weight when rebalancing, in ``[0, 1]``.
    """
    if not 0 <= min_region_weight <= 1:
        raise ValueError(f"boundary_weight_setter: min_region_weight must be in [0, 1], got {min_region_weight}.")
    return partial(
        _set_boundary_weight, _weighted_loss(loss), rebalance=rebalance, min_region_weight=float(min_region_weight)
    )


class BoundaryWeightMetric:
    """Report the loss's current boundary weight alpha as the trainer metric ``metric_name`` at every epoch.

    ``engine.state.metrics[metric_name]`` is what MONAI's ``StatsHandler`` prints and ``MLFlowHandler`` logs at the
    trainer's epoch end (step = epoch); the attribute ``engine.state.<metric_name>`` serves their
    ``state_attributes``. Written at epoch start (after the ``ParamSchedulerHandler`` that sets alpha, when listed
    after it) and again at epoch end, so the value is there whatever the order of the epoch-end handlers.

    Args:
        loss: ``DiceCEBoundaryLoss``, or a ``DeepSupervisionLoss`` around one.
        metric_name: key in ``engine.state.metrics`` and name of the state attribute.
    """

    def __init__(self, loss: Any, metric_name: str = "boundary_weight") -> None:
        self.loss = _weighted_loss(loss)
        self.metric_name = metric_name

    def attach(self, engine: Engine) -> None:
        """Publish alpha on ``engine`` (a trainer) at every epoch start and end."""
        for event in (Events.EPOCH_STARTED, Events.EPOCH_COMPLETED):
            if not engine.has_event_handler(self, event):
                engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        engine.state.metrics[self.metric_name] = self.loss.lambda_boundary
        setattr(engine.state, self.metric_name, self.loss.lambda_boundary)
