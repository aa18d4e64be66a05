"""MONAI's ``MLFlowHandler`` made safe for long runs: one run per process, crash-marking, and no crash on failure.

Three things MONAI's handler does not do, and a training run needs:

- **A tracking failure must not stop training.** A tracking server that dies mid-run makes every MLflow call raise;
  MONAI's handler lets the exception end the ignite engine. :class:`TrackedMLFlowHandler` catches it, reports one
  error naming the tracking URI and the failed operation, and turns MLflow logging off for the rest of the run
  (every handler sharing the run), while the trainer, ``CheckpointSaver`` and the rest go on.
- **A dead run must not be continued by the next one.** Runs are tagged with host and process id; at start, runs of
  the experiment still ``RUNNING`` from a process of this host that no longer exists are marked ``KILLED``; a run
  whose process exits without closing it (an exception) is marked ``FAILED`` at interpreter exit. Together with a
  unique run name (:func:`~monai_unet2.tracking.settings.unique_run_name`) no run is resumed by accident.
- **A resumed training continues its run.** :meth:`~TrackedMLFlowHandler.state_dict` is part of the training state
  (:class:`~monai_unet2.handlers.TrainingStateSaver`); restored by ``TrainingStateLoader``, every handler of this
  process with the same ``run_name`` (trainer and evaluator) reopens the saved run, even one marked ``KILLED``.
- **What identifies a run** is logged once at start: package versions, git commit, bundle version, the dataset
  digest, and the fully resolved config (``config/resolved_config.json``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.handlers import MLFlowHandler

from .config_snapshot import config_snapshot
from .settings import (
    artifact_location_for,
    configure_http_client,
    dataset_digest,
    git_commit,
    host_name,
    package_versions,
    read_bundle_version,
    unique_run_name,
)

__all__ = ["TrackedMLFlowHandler"]

logger = logging.getLogger(__name__)

HOST_TAG = "monai_unet2.host"
PID_TAG = "monai_unet2.pid"
END_REASON_TAG = "monai_unet2.end_reason"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TrackedMLFlowHandler(MLFlowHandler):
    """``MLFlowHandler`` that never fails the run it tracks, never resumes a dead run, and records provenance.

    Attach one to the trainer (``close_on_complete=True``) and one to the evaluator with the same
    ``tracking_uri``/``experiment_name``/``run_name``; both log into the same run. Other handlers
    (:class:`~monai_unet2.tracking.RegisterBestModel`, :class:`~monai_unet2.tracking.PredictionPreview`) log
    through :meth:`guarded` so they share the one-error-then-off behaviour.

    Args:
        tracking_uri: MLflow tracking URI (``MLFLOW_TRACKING_URI`` still wins, as in MONAI).
        experiment_name: experiment (the bundle name).
        run_name: run name; ``None`` draws a unique one (never MONAI's "resume latest unfinished run").
        config_parser: the bundle's parser (``$monai_unet2.tracking.active_config_parser()``): its resolved config
            is logged as ``config/resolved_config.json`` when the run starts.
        datalists: ``{"train": @train_datalist, "val": @val_datalist}``: logged as ``dataset_*`` params.
        bundle_root: bundle folder: its ``metadata.json`` version and git commit become tags.
        tags: extra run tags.
        kwargs: everything else ``MLFlowHandler`` takes (``experiment_param``, ``iteration_log``,
            ``output_transform``, ``close_on_complete``, ``artifact_location``...). ``artifact_location`` defaults
            to ``<database folder>/mlartifacts`` for a SQLite tracking URI.
    """

    _failures: dict[tuple[str, str], str] = {}
    _resume_targets: dict[tuple[str, str], tuple[str, str]] = {}

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "monai_experiment",
        run_name: str | None = None,
        config_parser: ConfigParser | None = None,
        datalists: Mapping[str, Iterable[Any]] | None = None,
        bundle_root: str | os.PathLike | None = None,
        tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        configure_http_client()
        self.effective_tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or ""
        if kwargs.get("artifact_location") is None and self.effective_tracking_uri:
            kwargs["artifact_location"] = artifact_location_for(self.effective_tracking_uri)
        self.config_parser = config_parser
        self.datalists = datalists
        self.bundle_root = bundle_root
        self.extra_tags = dict(tags or {})
        self._provenance_logged = False
        self._last_run_id: str | None = None
        self._exit_hook: Callable[[], None] | None = None
        run_name = run_name or unique_run_name()
        self._failure_key = (self.effective_tracking_uri, run_name)
        try:
            super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name, run_name=run_name, **kwargs)
        except Exception as error:  # a bad URI or an unwritable database must not stop the bundle from running
            self.experiment_name, self.run_name, self.cur_run, self.close_on_complete = (
                experiment_name,
                run_name,
                None,
                False,
            )
            self.client = None
            self._report_failure("connecting the MLflow client", error)

    @property
    def disabled(self) -> bool:
        """``True`` once an MLflow call of this run failed: all MLflow logging of the run is off."""
        return self._failure_key in self._failures

    @property
    def run_id(self) -> str | None:
        """The id of the MLflow run (also after :meth:`close`), ``None`` before start or once disabled."""
        if self.cur_run is not None:
            self._last_run_id = self.cur_run.info.run_id
        return None if self.disabled else self._last_run_id

    def _report_failure(self, what: str, error: BaseException) -> None:
        if self.disabled:
            return
        message = (
            f"MLflow tracking to {self.effective_tracking_uri or '<default URI>'} failed while {what} "
            f"(experiment '{self.experiment_name}', run '{self.run_name}'): {type(error).__name__}: {error}. "
            "MLflow logging is switched off for the rest of this run; training and checkpointing continue."
        )
        self._failures[self._failure_key] = message
        logger.error(message)

    def guarded(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``function`` unless tracking is off; on an exception report it once and switch tracking off.

        Args:
            what: the operation, for the error message ("logging epoch metrics").
            function: the MLflow call.
            args: positional arguments of ``function``.
            kwargs: keyword arguments of ``function``.

        Returns:
            the function's result, or ``None`` when tracking is off or the call failed.
        """
        if self.disabled or self.client is None:
            return None
        try:
            return function(*args, **kwargs)
        except Exception as error:
            self._report_failure(what, error)
            return None

    def state_dict(self) -> dict[str, str]:
        """The run to continue on resume: ``{"run_id", "run_name"}`` (empty strings when tracking is off)."""
        return {"run_id": self.run_id or "", "run_name": str(self.run_name or "") if self.run_id else ""}

    def load_state_dict(self, state_dict: Mapping[str, str]) -> None:
        """Continue the saved run: the handlers of this process sharing this ``run_name`` reopen it at start."""
        if state_dict.get("run_id"):
            self._resume_targets[self._failure_key] = (state_dict["run_id"], state_dict.get("run_name", ""))

    def _reopen(self, run_id: str, run_name: str, resumed_after_epoch: int) -> None:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            logger.warning(
                f"the training state names MLflow run {run_id} ('{run_name}'), which {self.effective_tracking_uri} "
                "does not have: the resumed training is tracked in a new run."
            )
            self._resume_targets.pop(self._failure_key, None)
            return
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        if END_REASON_TAG in run.data.tags:
            self.client.delete_tag(run_id, END_REASON_TAG)
        if self.close_on_complete:
            self.client.set_tag(run_id, "monai_unet2.resumed_after_epoch", str(resumed_after_epoch))
            logger.info(f"continuing MLflow run '{run.info.run_name}' ({run_id}).")
        self.cur_run = self.client.get_run(run_id)
        self.run_name = run.info.run_name

    def start(self, engine: Any) -> None:
        """Open (or join, or on resume reopen) the run, mark dead runs of this host, and log provenance once."""
        target = self._resume_targets.get(self._failure_key)
        if target is not None and self.cur_run is None and self.client is not None:
            epoch = int(getattr(engine.state, "epoch", 0) or 0)
            self.guarded("reopening the run to resume", self._reopen, *target, epoch)
        self.guarded("starting the run", super().start, engine)
        if self.run_id is not None and not self._provenance_logged:
            self._provenance_logged = True
            self.guarded("marking runs of dead processes", self._mark_dead_runs)
            self.guarded("logging run provenance", self._log_provenance)
            if self.close_on_complete:
                self._exit_hook = self._mark_failed_at_exit
                atexit.register(self._exit_hook)

    def iteration_completed(self, engine: Any) -> None:
        """Log the iteration output (loss) and the optimizer's ``lr`` unless tracking is off."""
        self.guarded("logging iteration metrics", super().iteration_completed, engine)

    def epoch_completed(self, engine: Any) -> None:
        """Log ``engine.state.metrics`` (val Dice, boundary weight) unless tracking is off."""
        self.guarded("logging epoch metrics", super().epoch_completed, engine)

    def complete(self) -> None:
        """Log the configured artifacts unless tracking is off."""
        self.guarded("logging artifacts", super().complete)

    def close(self) -> None:
        """Mark the run ``FINISHED`` (unless tracking is off) and drop the exit hook."""
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None
        self.guarded("closing the run", super().close)

    def _mark_failed_at_exit(self) -> None:
        run_id = self.run_id
        if run_id is None:
            return
        try:
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, "FAILED")
                logger.warning(f"MLflow run '{self.run_name}' ({run_id}) ended without completing: marked FAILED.")
        except Exception:  # the interpreter is exiting; the next run's dead-process check will catch it
            pass

    def _mark_dead_runs(self) -> None:
        host = host_name().replace("'", "")
        runs = self.client.search_runs(
            [self.experiment.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
            max_results=200,
        )
        for run in runs:
            pid = run.data.tags.get(PID_TAG, "")
            if run.info.run_id == self.run_id or not pid.isdigit() or _process_alive(int(pid)):
                continue
            self.client.set_tag(run.info.run_id, END_REASON_TAG, f"process {pid} on {host} died")
            self.client.set_terminated(run.info.run_id, "KILLED")
            logger.warning(
                f"MLflow run '{run.info.run_name}' ({run.info.run_id}) was left RUNNING by process {pid}, which no "
                "longer exists: marked KILLED."
            )

    def _log_provenance(self) -> None:
        run_id = self.run_id
        tags = {HOST_TAG: host_name(), PID_TAG: str(os.getpid()), **package_versions(), **self.extra_tags}
        if self.bundle_root is not None:
            tags["bundle_version"] = read_bundle_version(self.bundle_root)
            tags.update(git_commit(self.bundle_root))
        else:
            tags.update(git_commit(Path(__file__).parent))
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        if self.datalists is not None:
            params = dataset_digest(self.datalists)
            self._delete_exist_param_in_dict(params)
            self._log_params(params)
        if self.config_parser is not None:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "resolved_config.json"
                path.write_text(json.dumps(config_snapshot(self.config_parser), indent=2, default=str))
                self.client.log_artifact(run_id, str(path), artifact_path="config")
