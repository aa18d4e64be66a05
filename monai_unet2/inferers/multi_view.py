"""Multi-view 2.5D: models trained on different slice orientations of the same volumes, their probabilities averaged.

A 2.5D network sees a few neighbouring slices of one orientation, so it judges a structure's extent across
slices from little context. Networks trained on axial, coronal and sagittal slices make different errors, and
averaging their probabilities is the classic remedy (multi-view or "2.5D ensemble" fusion). A bundle states its
extra views in ``plans.json`` (``"views": {"coronal": {"slice_axis": 1, "roi_size": [48, 48]}, ...}``), trains
each with ``--view <name>`` into ``models/<name>/``, and its inference and evaluation configs wrap their fold
ensemble in :class:`MultiViewInferer`. MONAI ensembles prediction keys with transforms (``MeanEnsembled``), but a
bundle's ``inferer`` is the one place MONAI Label, the evaluator and batch inference all go through, so the views
are fused there, like the folds of :class:`monai_unet2.inferers.FoldEnsembleInferer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

from monai_unet2.inferers.ensemble import FoldEnsembleInferer, logits_to_probabilities, mean_probability_logits

__all__ = ["MultiViewInferer", "check_views", "views_that_fit"]

logger = logging.getLogger(__name__)


def check_views(views: Mapping[str, Mapping[str, Any]] | None, where: str = "views") -> dict[str, dict[str, Any]]:
    """``views`` as ``{name: {"slice_axis": int, "roi_size": [h, w]}}``, or a ``ValueError`` naming what is wrong.

    Args:
        views: the extra views, e.g. ``plans["views"]``; ``None`` means none.
        where: how the error message names the mapping (e.g. the plans file).
    """
    checked: dict[str, dict[str, Any]] = {}
    for name, view in dict(views or {}).items():
        if not isinstance(name, str) or not name or os.sep in name or name.startswith(".") or name.startswith("fold_"):
            raise ValueError(f"{where}: view name {name!r} must be a plain folder name (not fold_<k>).")
        try:
            slice_axis = int(view["slice_axis"])
            roi_size = [int(size) for size in view["roi_size"]]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{where}.{name} needs slice_axis (0, 1 or 2) and roi_size [h, w], got {view!r}."
            ) from error
        if slice_axis not in (0, 1, 2) or len(roi_size) != 2 or min(roi_size) < 1:
            raise ValueError(f"{where}.{name} needs slice_axis (0, 1 or 2) and roi_size [h, w], got {view!r}.")
        checked[name] = {"slice_axis": slice_axis, "roi_size": roi_size}
    return checked


def views_that_fit(
    views: Mapping[str, Mapping[str, Any]], spatial_shape: Sequence[int]
) -> tuple[list[str], dict[str, str]]:
    """Which views can infer a volume of ``spatial_shape``, and why each of the others cannot.

    A view sees planes spanned by the two axes other than its ``slice_axis``. Where the volume covers less than
    half of the view's training window along one of them (a single slice, a thin slab), the view's input would be
    mostly padding, unlike anything it was trained on, and its probabilities would drag the fusion towards
    background; such a view is left out of that volume's fusion.

    Args:
        views: checked views, as returned by :func:`check_views`.
        spatial_shape: the volume's spatial shape ``(H, W, D)``.

    Returns:
        the names of the views that fit, in order, and ``{name: reason}`` for the others.
    """
    fitting: list[str] = []
    unfit: dict[str, str] = {}
    for name, view in views.items():
        plane_axes = [axis for axis in range(3) if axis != view["slice_axis"]]
        plane = [int(spatial_shape[axis]) for axis in plane_axes]
        if all(2 * extent >= window for extent, window in zip(plane, view["roi_size"])):
            fitting.append(name)
        else:
            window = " x ".join(str(size) for size in view["roi_size"])
            unfit[name] = f"{plane[0]} x {plane[1]} voxels in its plane, under half its {window} training window"
    return fitting, unfit


class MultiViewInferer(Inferer):
    """Average the probabilities of the bundle's primary model and of one model per extra slice orientation.

    ``inferer`` infers the primary view (the plans' ``slice_axis`` and ``roi_size``, weights in ``models/``). Each
    extra view runs the same slice inferer along its own ``slice_axis`` with its own training window
    (:meth:`SlidingWindowSliceInferer.with_view`) and the fold ensemble found in ``models_dir/<name>``, with the
    same ``folds``. The returned logits are the logarithm of the mean probability over views (each view's
    probability being its folds' mean), so ``Activationsd`` and ``argmax`` downstream work unchanged. With no extra
    view the primary's output is returned as it is, bit for bit. A volume too thin for an extra view's plane (see
    :func:`views_that_fit`) is fused without that view, with a warning that names the volume and the view.

    Args:
        inferer: the primary view's :class:`FoldEnsembleInferer`, wrapping a ``SlidingWindowSliceInferer``.
        views: the extra views, ``{name: {"slice_axis": ..., "roi_size": [h, w]}}`` (``plans["views"]``).
        models_dir: the bundle's ``models/`` folder; view ``name`` is looked for in ``models_dir/name``.
        folds: which folds of each view to use, as for :func:`monai_unet2.inferers.trained_checkpoints`.
    """

    def __init__(
        self,
        inferer: FoldEnsembleInferer,
        views: Mapping[str, Mapping[str, Any]] | None = None,
        models_dir: str | os.PathLike | None = None,
        folds: str | int | Sequence[int | str] = "found",
    ) -> None:
        super().__init__()
        self.views = check_views(views)
        if self.views and models_dir is None:
            raise ValueError("MultiViewInferer needs models_dir to find the extra views' models in.")
        if self.views and not hasattr(inferer.inferer, "with_view"):
            raise TypeError(
                f"MultiViewInferer derives the views from a SlidingWindowSliceInferer, got {type(inferer.inferer)}."
            )
        self.inferer = inferer
        self.members: dict[str, Inferer] = {}
        for name, view in self.views.items():
            self.members[name] = FoldEnsembleInferer(
                inferer.inferer.with_view(view["slice_axis"], view["roi_size"]),
                models_dir=os.path.join(os.fspath(models_dir), name),  # type: ignore[arg-type]
                folds=folds,
                activation=inferer.activation,
            )

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Infer ``inputs`` with every view; see the class docstring for what is returned.

        Args:
            inputs: a volume batch ``(B, C, H, W, D)``.
            network: the architecture the members copy (its own weights are not used).
            args: passed to the views' inferers.
            kwargs: passed to the views' inferers.
        """
        for name, member in self.members.items():
            try:
                member.member_checkpoints()
            except FileNotFoundError as error:
                raise FileNotFoundError(
                    f"view '{name}': {error}; train it with --view {name}, or infer with the primary view only "
                    "(--views '{}')"
                ) from None
        primary = self.inferer(inputs, network, *args, **kwargs)
        fitting, unfit = views_that_fit(self.views, inputs.shape[2:])
        for name, reason in unfit.items():
            logger.warning("%s: view '%s' left out of the fusion (%s)", _volume_name(inputs), name, reason)
        if not fitting:
            return primary
        activation = self.inferer.activation
        total = logits_to_probabilities(primary, activation)
        for name in fitting:
            total = total + logits_to_probabilities(self.members[name](inputs, network, *args, **kwargs), activation)
        return mean_probability_logits(total / (len(fitting) + 1), activation)


def _volume_name(inputs: torch.Tensor) -> str:
    """The file a volume batch was read from (MONAI's ``filename_or_obj``), or "volume" when it has no metadata."""
    source = getattr(inputs, "meta", {}).get("filename_or_obj")
    if isinstance(source, (list, tuple)):
        source = source[0] if len(source) == 1 else ", ".join(str(item) for item in source)
    return str(source) if source else "volume"
