"""A training progress bar that a bundle's handler list can attach: ignite's tqdm ``ProgressBar``, configured up front."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine
    from ignite.handlers import ProgressBar
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    ProgressBar, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "ProgressBar")

__all__ = ["EpochProgressBar"]


def _named(transform: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    def named_output(output: Any) -> Any:
        value = transform(output)
        return value if isinstance(value, dict) else {name: value}

    return named_output


class EpochProgressBar(ProgressBar):
    """ignite's ``ProgressBar`` (one tqdm bar per epoch, the loss as postfix) with its display chosen at construction.

    MONAI attaches the entries of ``train#handlers`` with ``handler.attach(engine)`` alone, while ignite's bar takes
    what it shows (``output_transform``, ``metric_names``) as arguments of ``attach``; this subclass keeps them from
    the constructor. With ``enabled=False`` it attaches nothing (for runs logged to files, where the per-iteration
    ``StatsHandler`` lines read better).

    Args:
        output_transform: engine output -> value shown as postfix, e.g. ``from_engine(['loss'], first=True)``.
        output_name: the postfix label of a single value (``loss=0.81``); ignored when the transform returns a dict.
        metric_names: ``engine.state.metrics`` entries to show.
        enabled: attach the bar at all.
        persist: keep each finished epoch's bar on screen.
        tqdm_kwargs: further ``tqdm`` arguments (``ncols``, ``file``...).
    """

    rank_zero_only = True

    def __init__(
        self,
        output_transform: Callable[[Any], Any] | None = None,
        output_name: str = "loss",
        metric_names: str | list[str] | None = None,
        enabled: bool = True,
        persist: bool = True,
        **tqdm_kwargs: Any,
    ) -> None:
        super().__init__(persist=persist, **tqdm_kwargs)
        self.display_transform = None if output_transform is None else _named(output_transform, output_name)
        self.metric_names = metric_names
        self.enabled = bool(enabled)

    def attach(self, engine: Engine, metric_names: Any = None, output_transform: Any = None, **kwargs: Any) -> None:
        """Show the bar on ``engine``'s iterations (arguments given here win over the constructor's)."""
        if not self.enabled:
            return
        super().attach(
            engine,
            metric_names=metric_names or self.metric_names,
            output_transform=output_transform or self.display_transform,
            **kwargs,
        )
