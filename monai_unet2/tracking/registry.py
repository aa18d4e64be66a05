"""Push the best checkpoint of a run into the MLflow model registry, and move the ``champion`` alias fairly.

Each registered version is an MLflow logged model of its run: a pyfunc (models-from-code,
:mod:`monai_unet2.tracking.pyfunc_model`) with a tensor signature and an input example, whose only artifact is a
runnable bundle folder (configs, docs, ``models/model.pt`` state dict), so the same version can be served (``mlflow
models serve``), loaded as a ``torch.nn.Module`` (:func:`~monai_unet2.tracking.load_model`) or exported back into a
bundle (:func:`~monai_unet2.tracking.export_bundle`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .bundle_model import BUNDLE_ARTIFACT, stage_bundle
from .serving import serving_signature
from .settings import read_bundle_version

if TYPE_CHECKING:
    from .run import MLflowRun

__all__ = ["CHALLENGER", "CHAMPION", "RegisterBestModel", "assign_alias", "pip_requirements", "register_bundle_version"]

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PYFUNC_CODE = str(Path(__file__).with_name("pyfunc_model.py"))


def pip_requirements() -> list[str]:
    """What an environment needs to load a registered version: ``monai-unet2==<this version>`` and the dependency
    ranges monai-unet2 itself declares (``torch>=2.4``, ``monai[...]>=1.5``, ...), not the training environment's
    exact versions.

    Exact pins of the training environment made a version registered from MONAI Label's venv require
    ``numpy==1.26.4``, which the main environment (numpy 2) cannot satisfy although the model loads in both. The
    training environment's versions are recorded on the run instead (``version_*`` tags).
    """
    try:
        version = metadata.version("monai-unet2")
        declared = metadata.requires("monai-unet2") or []
    except metadata.PackageNotFoundError:
        return ["monai-unet2"]
    return [f"monai-unet2=={version}", *(r.split(";")[0].strip() for r in declared if "extra ==" not in r)]


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for the block, and restored exactly afterwards.

    The registry resolves a ``models:/<model id>`` source through the global URI only. ``mlflow.set_tracking_uri``
    also exports ``MLFLOW_TRACKING_URI``, and ``mlflow.get_tracking_uri()`` returns a default (``./mlflow.db``)
    when none is set, so restoring "the previous value" through the public API would leave a later call of the
    process pointed at the working directory: the unset state and the environment are restored as they were.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous, environment = getattr(tracking_utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if environment is not None:
            os.environ["MLFLOW_TRACKING_URI"] = environment
        else:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def assign_alias(
    client: Any, name: str, version: str, metric_name: str, metric_value: float, greater_is_better: bool = True
) -> str:
    """Give ``version`` the ``champion`` alias if it beats the current champion on ``metric_name``, else ``challenger``.

    The champion's score is read from its ``metric_name`` tag; a champion without that tag (another metric) is not
    displaced automatically.

    Returns:
        the alias given.
    """
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    wins = champion is None or str(champion.version) == str(version)
    if not wins:
        try:
            best = float(champion.tags[metric_name])
            wins = metric_value > best if greater_is_better else metric_value < best
        except (KeyError, ValueError):
            logger.warning(f"registered model '{name}': champion v{champion.version} has no '{metric_name}' tag.")
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(name, alias, str(version))
    return alias


def register_bundle_version(
    client: Any,
    run_id: str,
    name: str,
    bundle_root: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    tags: dict[str, str],
    model_name: str,
    step: int = 0,
) -> Any:
    """Log ``state_dict`` + the bundle's configs as an MLflow logged model of the run and register it as a version.

    The model is a pyfunc (models-from-code, :mod:`~monai_unet2.tracking.pyfunc_model`) with the serving signature
    and a small input example (:func:`~monai_unet2.tracking.serving.serving_signature`), the requirements of
    :func:`pip_requirements`, and the bundle as its only artifact. It is created with the client's logged-model
    calls rather than ``mlflow.pyfunc.log_model``, which works on the process-wide active run and experiment
    (without one it files the model under the Default experiment, in ``./mlruns`` of the working directory).

    Args:
        client: ``MlflowClient`` of the tracking server.
        run_id: the run the model belongs to.
        name: registered model name (the bundle name).
        bundle_root: the bundle whose configs/docs ship with the weights.
        state_dict: network weights.
        tags: version tags (metrics, bundle version, git commit).
        model_name: name of the logged model, e.g. ``epoch_0007``.
        step: the epoch, for the model's metrics.

    Returns:
        the created ``ModelVersion``.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from monai_unet2.bundle_config import read_metadata

    signature, example = serving_signature(read_metadata(bundle_root))
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name=model_name, source_run_id=run_id)
    try:
        with tempfile.TemporaryDirectory() as folder:
            bundle = stage_bundle(bundle_root, state_dict, Path(folder) / "bundle")
            mlflow.pyfunc.save_model(
                path=str(Path(folder) / "model"),
                python_model=PYFUNC_CODE,
                artifacts={BUNDLE_ARTIFACT: str(bundle)},
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements(),
                mlflow_model=Model(run_id=run_id, model_id=logged.model_id, artifact_path=logged.artifact_location),
            )
            client.log_model_artifacts(logged.model_id, str(Path(folder) / "model"))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"MONAI bundle {name} (monai_unet2), weights + configs.")
    with _tracking_uri(client.tracking_uri):  # the registry resolves models:/<model id> through the global URI
        return client.create_model_version(
            name, source=f"models:/{logged.model_id}", run_id=run_id, tags=tags, model_id=logged.model_id
        )


class RegisterBestModel:
    """Register the best validation checkpoint of a training run as a version of ``registered_model_name``.

    Attach to the trainer (``train#handlers``) with the evaluator given as ``validator``. When the evaluator's key
    metric improves (``best_metric_epoch`` is the current epoch), the network weights are copied (CPU, in memory).
    They are registered when ``register_every`` epochs have passed since the last registration and, at the end of
    training, if the final best is not registered yet. Each version costs one copy of the weights in the artifact
    store (~31 MB for the 32-feature UNet), so registering at every improvement of a long run is wasteful:
    ``register_every=1`` does it anyway.

    The version gets tags: every validation metric of the best epoch, ``key_metric``, ``epoch``, ``bundle_version``,
    ``git_commit``, ``run_id``; and the alias ``champion`` if it beats the current champion's key metric, else
    ``challenger`` (:func:`assign_alias`). It runs on rank 0 only (``rank_zero_only``).

    Args:
        mlflow_run: the :class:`~monai_unet2.tracking.MLflowRun` the versions belong to.
        validator: the evaluator whose key metric decides (``@validate#evaluator``).
        bundle_root: the bundle folder (configs and docs ship with the weights).
        registered_model_name: registry name, the bundle name.
        register_every: minimum epochs between registrations during training.
        greater_is_better: direction of the key metric.
    """

    rank_zero_only = True

    def __init__(
        self,
        mlflow_run: MLflowRun,
        validator: Any,
        bundle_root: str | os.PathLike,
        registered_model_name: str,
        register_every: int = 10,
        greater_is_better: bool = True,
    ) -> None:
        if register_every < 1:
            raise ValueError(f"RegisterBestModel: register_every must be >= 1, got {register_every}.")
        self.mlflow_run = mlflow_run
        self.validator = validator
        self.bundle_root = Path(bundle_root)
        self.registered_model_name = registered_model_name
        self.register_every = register_every
        self.greater_is_better = greater_is_better
        self.best: dict[str, Any] | None = None
        self.last_registered_epoch = 0
        self.registered_versions: list[tuple[str, str]] = []

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the last registered epoch and a kept best that is not registered yet."""
        pending = self.best if self.best is not None and not self.best["registered"] else None
        return {"last_registered_epoch": self.last_registered_epoch, "pending_best": pending or {}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (part of the training state, see ``TrainingStateSaver``)."""
        self.last_registered_epoch = int(state_dict["last_registered_epoch"])
        self.best = dict(state_dict["pending_best"]) or None

    def attach(self, engine: Any) -> None:
        """Watch the validator's epochs and the trainer's completion."""
        from ignite.engine import Events

        self.validator.add_event_handler(Events.EPOCH_COMPLETED, self.validation_completed)
        engine.add_event_handler(Events.COMPLETED, self.training_completed)

    def validation_completed(self, evaluator: Any) -> None:
        """Keep the weights when the key metric improved; register them if due."""
        state = evaluator.state
        if state.key_metric_name is None or state.best_metric_epoch != state.epoch:
            return
        network = getattr(evaluator.network, "module", evaluator.network)
        self.best = {
            "epoch": int(state.epoch),
            "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()},
            "metrics": {k: float(v) for k, v in state.metrics.items() if isinstance(v, (int, float))},
            "key_metric": state.key_metric_name,
            "registered": False,
        }
        if state.epoch - self.last_registered_epoch >= self.register_every:
            self.register()

    def training_completed(self, _: Any = None) -> None:
        """Register the final best weights unless they already are."""
        if self.best is not None and not self.best["registered"]:
            self.register()

    def register(self) -> None:
        """Log, register and alias the kept best weights (through the run's failure guard)."""
        if self.best is None or self.mlflow_run.run_id is None:
            return
        self.best["registered"] = True
        self.last_registered_epoch = self.best["epoch"]
        self.mlflow_run.guarded("registering the best model", self._register, self.best)

    def _register(self, best: dict[str, Any]) -> None:
        client, run_id = self.mlflow_run.client, self.mlflow_run.run_id
        key_metric = best["key_metric"]
        tags = {name: f"{value:.6f}" for name, value in best["metrics"].items()}
        tags.update(
            key_metric=key_metric,
            epoch=str(best["epoch"]),
            bundle_version=read_bundle_version(self.bundle_root),
            run_id=run_id,
            run_name=str(self.mlflow_run.run_name),
        )
        run_tags = client.get_run(run_id).data.tags  # the commit the run started from: one truth for both
        tags.update({key: run_tags[key] for key in ("git_commit", "git_dirty") if key in run_tags})
        version = register_bundle_version(
            client,
            run_id,
            self.registered_model_name,
            self.bundle_root,
            best["state_dict"],
            tags,
            model_name=f"epoch_{best['epoch']:04d}",
            step=best["epoch"],
        )
        alias = assign_alias(
            client,
            self.registered_model_name,
            version.version,
            key_metric,
            best["metrics"][key_metric],
            self.greater_is_better,
        )
        self.registered_versions.append((str(version.version), alias))
        client.set_tag(run_id, "registered_model_version", f"{self.registered_model_name}/{version.version}")
        logger.info(
            f"registered {self.registered_model_name} v{version.version} (epoch {best['epoch']}, "
            f"{key_metric}={best['metrics'][key_metric]:.4f}) as '{alias}'."
        )
