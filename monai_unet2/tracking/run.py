"""The MLflow run of one training process, one object shared by every handler that logs into it.

MONAI's ``MLFlowHandler`` has each handler find its run by name and lets any tracking error end the engine. A
training run needs more, and :class:`MLflowRun` keeps it in one explicit object that the config hands to the
trainer's and the evaluator's :class:`~monai_unet2.tracking.TrackedMLFlowHandler`, to
:class:`~monai_unet2.tracking.RegisterBestModel` and :class:`~monai_unet2.tracking.PredictionPreview`, and to the
training state:

- **A tracking failure must not stop training.** A tracking server that dies mid-run makes every MLflow call raise.
  Every call goes through :meth:`MLflowRun.guarded`: the first failure is reported once, naming the tracking URI and
  the operation, and MLflow logging is off for the rest of the run, for every handler sharing it, while training and
  checkpointing go on.
- **A dead run must not be continued by the next one.** The run name is unique per process; runs are tagged with host
  and process id; when a run opens, runs of the experiment still ``RUNNING`` from a process of this host that no
  longer exists are marked ``KILLED``; a run whose process exits without closing it is marked ``FAILED`` at exit.
- **A resumed training continues its run.** :meth:`MLflowRun.state_dict` is part of the training state; restored by
  ``TrainingStateLoader``, the next handler that starts reopens the saved run, even one marked ``KILLED``.
- **What identifies a run** is logged when it opens: package versions, git commit, bundle version, host and process,
  the dataset digest, the command line, and the bundle's config files (``config/``). MONAI's ``--tracking mlflow``
  logs its executed config the same way, but only when that flag is given; training is tracked without it.

Nothing here talks to MLflow before a handler opens the run at its engine's start, on rank 0: constructing an
``MlflowClient`` creates and migrates a SQLite database, which the other ranks of a DDP run must not race to do.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import (
    configure_http_client,
    dataset_digest,
    git_commit,
    host_name,
    package_versions,
    read_bundle_version,
    unique_run_name,
)

if TYPE_CHECKING:
    from monai.handlers import MLFlowHandler

__all__ = ["END_REASON_TAG", "HOST_TAG", "PID_TAG", "RESUMED_TAG", "MLflowRun"]

logger = logging.getLogger(__name__)

HOST_TAG = "monai_unet2.host"
PID_TAG = "monai_unet2.pid"
END_REASON_TAG = "monai_unet2.end_reason"
RESUMED_TAG = "monai_unet2.resumed_after_epoch"
COMMAND_TAG = "command_line"
MAX_TAG_LENGTH = 5000


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MLflowRun:
    """One MLflow run shared by the handlers of a training process (see the module docstring).

    Args:
        tracking_uri: MLflow tracking URI (``MLFLOW_TRACKING_URI`` wins, as in MONAI).
        experiment_name: experiment (the bundle name).
        run_name: run name; ``None`` draws a unique one (never MONAI's "continue the latest unfinished run").
        bundle_root: bundle folder: its ``metadata.json`` version, git commit and ``configs/`` files are logged.
        datalists: ``{"train": @train_datalist, "val": @val_datalist}``: logged as ``dataset_*`` params.
        tags: extra run tags.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "monai_experiment",
        run_name: str | None = None,
        bundle_root: str | os.PathLike | None = None,
        datalists: Mapping[str, Iterable[Any]] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        configure_http_client()
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or None
        self.experiment_name = experiment_name
        self.run_name = run_name or unique_run_name()
        self.bundle_root = bundle_root
        self.datalists = datalists
        self.extra_tags = dict(tags or {})
        self.client: Any = None
        self.failure: str | None = None
        self.resume_run_id: str | None = None
        self._run_id: str | None = None
        self._opened = False
        self._exit_hook: Callable[[], None] | None = None

    @property
    def disabled(self) -> bool:
        """``True`` once an MLflow call of this run failed: all MLflow logging of the run is off."""
        return self.failure is not None

    @property
    def run_id(self) -> str | None:
        """The id of the MLflow run once a handler opened it; ``None`` before, and once tracking is off."""
        return None if self.disabled else self._run_id

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
        if self.disabled:
            return None
        try:
            return function(*args, **kwargs)
        except Exception as error:
            self.failure = (
                f"MLflow tracking to {self.tracking_uri or '<default URI>'} failed while {what} "
                f"(experiment '{self.experiment_name}', run '{self.run_name}'): {type(error).__name__}: {error}. "
                "MLflow logging is switched off for the rest of this run; training and checkpointing continue."
            )
            logger.error(self.failure)
            return None

    def state_dict(self) -> dict[str, str]:
        """The run to continue on resume: ``{"run_id", "run_name"}`` (empty strings when tracking is off)."""
        run_id = self.run_id
        return {"run_id": run_id or "", "run_name": self.run_name if run_id else ""}

    def load_state_dict(self, state_dict: Mapping[str, str]) -> None:
        """Continue the saved run: the next handler that starts reopens it."""
        if state_dict.get("run_id"):
            self.resume_run_id = state_dict["run_id"]

    def join(self, handler: MLFlowHandler, engine: Any) -> None:
        """Point ``handler`` at this run before MONAI's ``start``: the saved run on resume, or the run an earlier
        handler opened. Otherwise MONAI's ``start`` creates the run under :attr:`run_name`.

        Args:
            handler: a MONAI ``MLFlowHandler`` about to start.
            engine: its engine (the trainer's epoch is recorded when a run is resumed).
        """
        if self._run_id is None and self.resume_run_id is not None:
            self._reopen(handler.client, self.resume_run_id, int(getattr(engine.state, "epoch", 0) or 0))
        if self._run_id is not None:
            handler.cur_run = handler.client.get_run(self._run_id)

    def _reopen(self, client: Any, run_id: str, resumed_after_epoch: int) -> None:
        from mlflow.exceptions import MlflowException

        self.resume_run_id = None
        try:
            run = client.get_run(run_id)
        except MlflowException:
            logger.warning(
                f"the training state names MLflow run {run_id}, which {self.tracking_uri or '<default URI>'} does not "
                f"have: the resumed training is tracked in a new run '{self.run_name}'."
            )
            return
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        if END_REASON_TAG in run.data.tags:
            client.delete_tag(run_id, END_REASON_TAG)
        client.set_tag(run_id, RESUMED_TAG, str(resumed_after_epoch))
        self.run_name = run.info.run_name
        self._run_id = run_id
        logger.info(f"continuing MLflow run '{self.run_name}' ({run_id}).")

    def opened(self, handler: MLFlowHandler) -> None:
        """Called after MONAI's ``start`` of each handler; the first time, take the run it opened, mark runs of dead
        processes, log what identifies the run, and arrange for ``FAILED`` if the process exits without closing it.

        Args:
            handler: the MONAI ``MLFlowHandler`` that started (its ``client`` becomes the run's client).
        """
        if self._opened:
            return
        self._opened = True
        self.client = handler.client
        self._run_id = handler.cur_run.info.run_id
        experiment_id = handler.cur_run.info.experiment_id
        self.guarded("marking runs of dead processes", self._mark_dead_runs, experiment_id)
        self.guarded("logging run provenance", self._log_provenance)
        self._exit_hook = self._mark_failed_at_exit
        atexit.register(self._exit_hook)

    def closed(self) -> None:
        """The run was closed (``FINISHED``): drop the exit hook."""
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None

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

    def _mark_dead_runs(self, experiment_id: str) -> None:
        host = host_name().replace("'", "")
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
            max_results=200,
        )
        for run in runs:
            pid = run.data.tags.get(PID_TAG, "")
            if run.info.run_id == self._run_id or not pid.isdigit() or _process_alive(int(pid)):
                continue
            self.client.set_tag(run.info.run_id, END_REASON_TAG, f"process {pid} on {host} died")
            self.client.set_terminated(run.info.run_id, "KILLED")
            logger.warning(
                f"MLflow run '{run.info.run_name}' ({run.info.run_id}) was left RUNNING by process {pid}, which no "
                "longer exists: marked KILLED."
            )

    def _log_provenance(self) -> None:
        from mlflow.entities import Param, RunTag

        run_id = self._run_id
        command = shlex.join(sys.orig_argv)
        tags = {
            HOST_TAG: host_name(),
            PID_TAG: str(os.getpid()),
            COMMAND_TAG: command if len(command) <= MAX_TAG_LENGTH else command[: MAX_TAG_LENGTH - 3] + "...",
            **package_versions(),
            **self.extra_tags,
        }
        if self.bundle_root is not None:
            tags["bundle_version"] = read_bundle_version(self.bundle_root)
            tags.update(git_commit(self.bundle_root))
        else:
            tags.update(git_commit(Path(__file__).parent))
        logged = self.client.get_run(run_id).data.params
        params = dataset_digest(self.datalists) if self.datalists is not None else {}
        self.client.log_batch(
            run_id,
            params=[Param(key, value) for key, value in params.items() if key not in logged],
            tags=[RunTag(key, str(value)) for key, value in tags.items()],
        )
        configs = Path(self.bundle_root) / "configs" if self.bundle_root is not None else None
        if configs is not None and configs.is_dir():
            self.client.log_artifacts(run_id, str(configs), artifact_path="config")
