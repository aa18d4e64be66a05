"""Fold ensembles: every trained cross-validation fold of a bundle predicts, their probabilities are averaged.

A bundle trained with ``--fold k`` keeps each fold's best checkpoint in ``models/fold_<k>/model.pt`` (``fold_all``
for a training on every case), next to ``models/model.pt``, the single model that tools which load one network use
(MONAI Label, ``ckpt_export``, the MLflow registry). :func:`trained_checkpoints` finds the folds;
:class:`FoldEnsembleInferer` wraps any inferer so that a bundle's ``inferer`` runs all of them, the way nnU-Net
predicts with every fold it finds. MONAI has ensemble *transforms* (``MeanEnsembled`` over several prediction keys)
but nothing that ensembles inside one ``inferer(inputs, network)`` call, which is the one place MONAI Label, the
bundle evaluator and inference all go through.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = [
    "FOLD_DIR_PATTERN",
    "FoldEnsembleInferer",
    "fold_dir_name",
    "logits_to_probabilities",
    "mean_probability_logits",
    "trained_checkpoints",
]

logger = logging.getLogger(__name__)

#: folder name of a fold's checkpoints inside ``models/``: ``fold_0``, ``fold_1``, ..., ``fold_all``
FOLD_DIR_PATTERN = re.compile(r"^fold_(\d+|all)$")
CHECKPOINT = "model.pt"
_ACTIVATIONS = ("softmax", "sigmoid")


def fold_dir_name(fold: int | str) -> str:
    """``fold_<k>`` for a fold index or ``"all"``, the folder of that fold's checkpoints in ``models/``."""
    if str(fold) != "all" and not str(fold).isdigit():
        raise ValueError(f"fold must be a non-negative integer or 'all', got {fold!r}")
    return f"fold_{fold}"


def trained_checkpoints(models_dir: str | os.PathLike, folds: str | int | Sequence[int | str] = "found") -> list[str]:
    """The checkpoints an inference or evaluation of a bundle uses.

    Args:
        models_dir: the bundle's ``models/`` folder.
        folds: ``"found"``: every ``fold_<k>/model.pt`` with a numeric ``k``, else ``fold_all/model.pt``, else the
            single ``model.pt``; or the folds to use (``[0, 2]``, ``"0,2"``, ``"all"``), each of which must exist;
            a bundle with no fold checkpoint at all (a single ``model.pt``, e.g. shipped weights) uses it for any.

    Raises:
        FileNotFoundError: a requested fold that has no checkpoint, or no checkpoint at all.
    """
    root = Path(models_dir)
    found = {}
    if root.is_dir():
        for entry in root.iterdir():
            match = FOLD_DIR_PATTERN.match(entry.name)
            if match and (entry / CHECKPOINT).is_file():
                found[match[1]] = str(entry / CHECKPOINT)
    if not found and (root / CHECKPOINT).is_file() and folds != "found":
        logger.info("%s has no fold checkpoints: the single %s stands for fold(s) %s", root, CHECKPOINT, folds)
        return [str(root / CHECKPOINT)]
    if isinstance(folds, str) and folds == "found":
        numeric = sorted((int(k), path) for k, path in found.items() if k != "all")
        if numeric:
            return [path for _, path in numeric]
        if "all" in found:
            return [found["all"]]
        if (root / CHECKPOINT).is_file():
            return [str(root / CHECKPOINT)]
        raise FileNotFoundError(
            f"{root}: no trained model (neither fold_<k>/{CHECKPOINT} nor {CHECKPOINT}); train the bundle first"
        )
    if isinstance(folds, (str, int)):
        folds = [item.strip() for item in str(folds).split(",") if item.strip()]
    paths = [root / fold_dir_name(fold) / CHECKPOINT for fold in folds]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no checkpoint for the requested fold(s): {', '.join(missing)}")
    return [str(path) for path in paths]


class FoldEnsembleInferer(Inferer):
    """Run ``inferer`` with every checkpoint and average the members' probabilities.

    ``inferer(inputs, network)`` builds one member per checkpoint from the ``network`` it is given (a copy with
    that checkpoint's weights, loaded with ``torch.load(weights_only=True)`` and kept until the file changes), runs
    the wrapped ``inferer`` with each, and averages their probabilities. It returns the logarithm of the average
    (the logit for ``sigmoid``), so that the bundle's ``Activationsd`` turns it back into the averaged probabilities
    exactly and ``argmax`` picks the class with the highest mean probability. With one checkpoint and an inferer
    that returns logits the member's logits are returned unchanged, bit for bit those of a single model.

    If the wrapped inferer already returns probabilities (``SlidingWindowSliceInferer`` with ``tta_activation``,
    e.g. for flip test-time augmentation) they are averaged as they are.

    Args:
        inferer: the inferer each member runs (e.g. ``SlidingWindowSliceInferer``).
        checkpoints: the members' state-dict files; ``None`` finds them at each call with
            :func:`trained_checkpoints` in ``models_dir``, so a fold trained meanwhile joins the ensemble.
        models_dir: the bundle's ``models/`` folder, used when ``checkpoints`` is ``None``.
        folds: which folds :func:`trained_checkpoints` returns (default: every fold found).
        activation: ``"softmax"`` (over channels) or ``"sigmoid"``: how the members' logits become probabilities.
    """

    def __init__(
        self,
        inferer: Inferer | Callable[..., torch.Tensor],
        checkpoints: Sequence[str | os.PathLike] | None = None,
        models_dir: str | os.PathLike | None = None,
        folds: str | int | Sequence[int | str] = "found",
        activation: str = "softmax",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        if checkpoints is None and models_dir is None:
            raise ValueError("FoldEnsembleInferer needs checkpoints or a models_dir to find them in")
        self.inferer = inferer
        self.checkpoints = None if checkpoints is None else [os.fspath(path) for path in checkpoints]
        self.models_dir = models_dir
        self.folds = folds
        self.activation = activation
        self._members: dict[str, tuple[float, torch.nn.Module]] = {}
        self._announced: list[str] | None = None

    def member_checkpoints(self) -> list[str]:
        """The checkpoint files of the members, as the next call will use them."""
        if self.checkpoints is not None:
            return list(self.checkpoints)
        assert self.models_dir is not None
        return trained_checkpoints(self.models_dir, self.folds)

    def _member(self, path: str, network: torch.nn.Module) -> torch.nn.Module:
        stamp = os.stat(path).st_mtime
        cached = self._members.get(path)
        if cached is None or cached[0] != stamp:
            template = getattr(network, "module", network)
            device = next(template.parameters(), torch.empty(0)).device
            from monai_unet2.handlers.weights import load_weights_into  # torch.load(weights_only=True), named errors

            member = load_weights_into(copy.deepcopy(template), path, map_location=device)
            self._members[path] = (stamp, member)
            cached = self._members[path]
        member = cached[1]
        member.train(network.training)
        return member

    def _probabilities(self, output: torch.Tensor, returns_probabilities: bool) -> torch.Tensor:
        return output if returns_probabilities else logits_to_probabilities(output, self.activation)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Infer ``inputs`` with every member; see the class docstring for what is returned.

        Args:
            inputs: what the wrapped inferer takes.
            network: the architecture the members copy (its own weights are not used).
            args: passed to the wrapped inferer.
            kwargs: passed to the wrapped inferer.
        """
        paths = self.member_checkpoints()
        if paths != self._announced:
            logger.info("inference with %d model(s): %s", len(paths), ", ".join(paths))
            self._announced = paths
        for stale in set(self._members) - set(paths):
            del self._members[stale]
        returns_probabilities = getattr(self.inferer, "tta_activation", None) is not None
        if len(paths) == 1 and not returns_probabilities:
            return self.inferer(inputs, self._member(paths[0], network), *args, **kwargs)
        total = None
        for path in paths:
            output = self._probabilities(
                self.inferer(inputs, self._member(path, network), *args, **kwargs), returns_probabilities
            )
            total = output if total is None else total + output
        assert total is not None
        return mean_probability_logits(total / len(paths), self.activation)


def logits_to_probabilities(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """Probabilities of ``logits`` under ``activation`` (softmax over dim 1, or sigmoid), the inverse of
    :func:`mean_probability_logits`.

    Args:
        logits: network or ensemble output, channels in dim 1.
        activation: ``"softmax"`` or ``"sigmoid"``.
    """
    return torch.softmax(logits, dim=1) if activation == "softmax" else torch.sigmoid(logits)


def mean_probability_logits(mean: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """Logits whose ``activation`` gives back ``mean``, an average of probabilities.

    The logarithm for ``softmax`` (the probabilities sum to one over channels, so softmax of their logarithm is
    themselves), the logit for ``sigmoid``; clamped away from 0 (and 1) so that nothing is infinite.

    Args:
        mean: averaged probabilities, channels in dim 1.
        activation: ``"softmax"`` or ``"sigmoid"``, the activation that produced them.
    """
    mean = mean.clamp(1e-7, 1.0 - 1e-7 if activation == "sigmoid" else 1.0)
    return torch.log(mean) if activation == "softmax" else torch.log(mean) - torch.log1p(-mean)
