"""MONAI's ``MLFlowHandler`` logging into a shared :class:`~monai_unet2.tracking.MLflowRun`, without ever failing it.

What is logged, and when, is MONAI's: the iteration loss and learning rate, ``engine.state.metrics`` per epoch,
``experiment_param``, ``max_epochs`` / ``epoch_length``, artifacts. What this module adds is what MONAI's handler
cannot do: every call goes through the run's failure guard (a dead tracking server switches tracking off with one
error instead of ending training), the handler logs into the one run of the process (reopened on resume) instead of
searching it by name, and MONAI's handler is only created when attached, so that a DDP rank that does not attach it
never opens an MLflow client (which would create and migrate the SQLite database in parallel with rank 0).
"""

from __future__ import annotations

from typing import Any

from monai.handlers import MLFlowHandler

from .run import MLflowRun

__all__ = ["TrackedMLFlowHandler"]


class _RunMLFlowHandler(MLFlowHandler):
    """``MLFlowHandler`` whose event methods log into ``mlflow_run`` through its failure guard.

    Args:
        mlflow_run: the run of this process.
        kwargs: every other ``MLFlowHandler`` argument.
    """

    def __init__(self, mlflow_run: MLflowRun, **kwargs: Any) -> None:
        super().__init__(
            tracking_uri=mlflow_run.tracking_uri,
            experiment_name=mlflow_run.experiment_name,
            run_name=mlflow_run.run_name,
            **kwargs,
        )
        self.mlflow_run = mlflow_run

    def start(self, engine: Any) -> None:
        """Join the shared run (reopening a resumed one), then MONAI's start: experiment, run, params."""
        self.mlflow_run.guarded("starting the run", self._start, engine)

    def _start(self, engine: Any) -> None:
        self.mlflow_run.join(self, engine)
        super().start(engine)
        self.mlflow_run.opened(self)

    def iteration_completed(self, engine: Any) -> None:
        """Log the iteration output (loss) and the optimizer's ``lr`` unless tracking is off."""
        self.mlflow_run.guarded("logging iteration metrics", super().iteration_completed, engine)

    def epoch_completed(self, engine: Any) -> None:
        """Log ``engine.state.metrics`` (val Dice, boundary weight) unless tracking is off."""
        self.mlflow_run.guarded("logging epoch metrics", super().epoch_completed, engine)

    def complete(self) -> None:
        """Log the configured artifacts unless tracking is off."""
        self.mlflow_run.guarded("logging artifacts", super().complete)

    def close(self) -> None:
        """Mark the run ``FINISHED`` unless tracking is off."""
        self.mlflow_run.guarded("closing the run", super().close)
        self.mlflow_run.closed()


class TrackedMLFlowHandler:
    """Log an engine into the run's MLflow run with MONAI's ``MLFlowHandler``, fail-soft (see the module docstring).

    Attach one to the trainer (``close_on_complete=True``) and one to the evaluator, both with the same
    ``mlflow_run``; they log into the same run. It runs on rank 0 only (``rank_zero_only``).

    Args:
        mlflow_run: the :class:`~monai_unet2.tracking.MLflowRun` of this training (``@mlflow_run``).
        kwargs: every ``MLFlowHandler`` argument but the tracking URI, experiment and run name, which come from
            ``mlflow_run``: ``tag_name``, ``output_transform``, ``iteration_log``, ``experiment_param``,
            ``close_on_complete``, ``artifacts``, ``artifact_location`` (default: MONAI's, ``mlruns/`` beside a
            SQLite database)...
    """

    rank_zero_only = True

    def __init__(self, mlflow_run: MLflowRun, **kwargs: Any) -> None:
        self.mlflow_run = mlflow_run
        self.mlflow_handler_args = kwargs
        self.mlflow_handler: MLFlowHandler | None = None

    def attach(self, engine: Any) -> None:
        """Create MONAI's handler (connecting the MLflow client) and attach it to ``engine``.

        Args:
            engine: the trainer or the evaluator.
        """
        self.mlflow_handler = self.mlflow_run.guarded(
            "connecting the MLflow client", _RunMLFlowHandler, self.mlflow_run, **self.mlflow_handler_args
        )
        if self.mlflow_handler is not None:
            self.mlflow_handler.attach(engine)
