"""Pictures of what the model predicts on validation volumes, logged to the MLflow run every few epochs.

Numbers (Dice) say how good a model is; a picture says how it fails (a missed structure, a leak into a
neighbour). :class:`PredictionPreview` keeps the first validation volumes of an epoch, takes from each the slice
with most labelled voxels, and draws image, label contour and prediction overlay side by side with matplotlib
(installed with MLflow) into ``previews/epoch_<NNNN>.png``.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .run import MLflowRun

__all__ = ["PredictionPreview", "render_preview"]


def _label_volume(value: Any) -> np.ndarray:
    """(C,H,W,D) one-hot or (1,H,W,D) label map → (H,W,D) integer labels."""
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return array.argmax(0) if array.shape[0] > 1 else array[0].round().astype(np.int64)


def render_preview(
    cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: str, title: str = "", slice_axis: int = 2
) -> int:
    """Draw image + label contour + prediction overlay of the slice with most foreground of each case into a PNG.

    Args:
        cases: ``(image, label, pred)`` triples of 3D arrays (H,W,D) of one volume each, or 2D images (H,W).
        path: PNG file to write.
        title: figure title (e.g. "epoch 5").
        slice_axis: spatial axis to slice along (0, 1, 2).

    Returns:
        the number of panels drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases), 3.6), squeeze=False)
    for axis, (image, label, pred) in zip(axes[0], cases):
        if image.ndim == 2:  # a 2D bundle: the image is the slice
            index, take = 0, (slice(None), slice(None))
        else:
            counts = (label > 0).sum(axis=tuple(i for i in range(3) if i != slice_axis))
            index = int(counts.argmax()) if counts.max() > 0 else image.shape[slice_axis] // 2
            take = [slice(None)] * 3
            take[slice_axis] = index
        image2d, label2d, pred2d = (np.asarray(v[tuple(take)], dtype=float).T for v in (image, label, pred))
        axis.imshow(image2d, cmap="gray", origin="lower")
        overlay = np.ma.masked_where(pred2d == 0, pred2d)
        axis.imshow(overlay, cmap="autumn", alpha=0.45, origin="lower", vmin=0, vmax=max(1.0, float(label.max())))
        if label2d.max() > 0:
            axis.contour(label2d, levels=np.arange(0.5, label2d.max() + 0.5), colors="cyan", linewidths=0.8)
        axis.set_title(f"slice {index}: label (cyan), pred (fill)", fontsize=7)
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return len(cases)


class PredictionPreview:
    """Every ``interval`` epochs, log a PNG of predictions on the first ``num_volumes`` validation volumes.

    Attach to the evaluator (``validate#handlers``); its post-processed output must hold ``image``, ``label`` and
    ``pred`` (one-hot or label maps). The evaluator's epoch is the trainer's, so the file is
    ``previews/epoch_<trainer epoch>.png``; the last epoch of training is always drawn. It runs on rank 0 only
    (``rank_zero_only``).

    Args:
        mlflow_run: the :class:`~monai_unet2.tracking.MLflowRun` to log into (run id, failure handling).
        interval: draw every ``interval`` epochs (and on the first and last).
        num_volumes: how many validation volumes to draw.
        slice_axis: spatial axis to slice along.
        max_epochs: the trainer's ``max_epochs``, to recognise the last epoch.
    """

    rank_zero_only = True

    def __init__(
        self,
        mlflow_run: MLflowRun,
        interval: int = 5,
        num_volumes: int = 2,
        slice_axis: int = 2,
        max_epochs: int | None = None,
    ) -> None:
        if interval < 1 or num_volumes < 1:
            raise ValueError(
                f"PredictionPreview: interval and num_volumes must be >= 1, got {interval}, {num_volumes}."
            )
        self.mlflow_run = mlflow_run
        self.interval = interval
        self.num_volumes = num_volumes
        self.slice_axis = slice_axis
        self.max_epochs = max_epochs
        self._cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def attach(self, engine: Any) -> None:
        """Collect volumes at every iteration of a drawn epoch and log the figure when the epoch ends."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_preview)

    def _drawn(self, epoch: int) -> bool:
        return epoch == 1 or epoch % self.interval == 0 or (self.max_epochs is not None and epoch >= self.max_epochs)

    def collect(self, engine: Any) -> None:
        """Keep image, label and prediction of the batch's volumes while fewer than ``num_volumes`` are kept."""
        if not self._drawn(engine.state.epoch) or len(self._cases) >= self.num_volumes:
            return
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in outputs:
            if len(self._cases) >= self.num_volumes or not all(k in item for k in ("image", "label", "pred")):
                continue
            image = (
                item["image"].detach().cpu().numpy()[0] if isinstance(item["image"], torch.Tensor) else item["image"][0]
            )
            self._cases.append(
                (np.asarray(image, dtype=np.float32), _label_volume(item["label"]), _label_volume(item["pred"]))
            )

    def log_preview(self, engine: Any) -> None:
        """Render the kept volumes and log ``previews/epoch_<NNNN>.png`` to the run."""
        run_id = self.mlflow_run.run_id
        if not self._cases or run_id is None:
            return
        epoch = engine.state.epoch
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, f"epoch_{epoch:04d}.png")
            render_preview(self._cases, path, title=f"validation, epoch {epoch}", slice_axis=self.slice_axis)
            self.mlflow_run.guarded(
                "logging the prediction preview", self.mlflow_run.client.log_artifact, run_id, path, "previews"
            )
        self._cases.clear()
