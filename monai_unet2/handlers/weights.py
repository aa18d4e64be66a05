"""Loading weights: only tensors, and a refusal that names the file and never suggests unsafe loading.

``torch.load(..., weights_only=True)`` refuses a checkpoint that would run code when unpickled, and says why in a
message that recommends the two ways to load it anyway: "Re-running ``torch.load`` with ``weights_only`` set to
``False`` will likely succeed" and ``torch.serialization.add_safe_globals([posix.system])``. For a file from someone
else both run their code. :func:`load_weights` keeps torch's restricted unpickler and replaces that message with what
the refusal means and what to do instead (ask for, or re-save as, a plain state dict), naming the file and the Python
callable it asked for; torch's text is kept out of the error chain. :func:`describe_weights_error` does the same for
any failure to load weights (missing, truncated, not a checkpoint). :class:`SafeCheckpointLoader` is MONAI's
``CheckpointLoader`` (used by the bundles' inference and evaluation) with these messages, and also for weights that do
not fit the network.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from typing import Any

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

__all__ = [
    "SafeCheckpointLoader",
    "WeightsFileError",
    "describe_weights_error",
    "load_weights",
    "load_weights_into",
    "save_half_precision",
    "with_pretrained_weights",
]

logger = logging.getLogger(__name__)

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|Unsupported class ([\w.]+)|Unsupported operand (\d+)")


class WeightsFileError(RuntimeError):
    """A weights file that cannot be loaded; the message names the file and why, and never suggests
    ``weights_only=False``."""


def _is_unpickling_refusal(error: BaseException) -> bool:
    return isinstance(error, pickle.UnpicklingError) or "Weights only load failed" in str(error)


def describe_weights_error(path: str | os.PathLike, error: BaseException) -> str:
    """One line saying why the weights at ``path`` could not be loaded.

    Args:
        path: the weights file.
        error: what ``torch.load`` (or loading into the network) raised.
    """
    path = os.fspath(path)
    text = str(error)
    if _is_unpickling_refusal(error):
        match = _GLOBAL.search(text)
        wanted = next((group for group in match.groups() if group), None) if match else None
        asked = f"it asks to call {wanted}" if wanted else "it holds Python objects other than tensors"
        return (
            f"{path}: refused: not plain weights: unpickling this file would run Python code ({asked}), which a "
            "checkpoint from another source can use to take over your account. Only tensors in dicts and lists are "
            "loaded: ask its author for a state dict (torch.save(model.state_dict(), path)); if you made the file "
            "yourself, re-save it that way"
        )
    if isinstance(error, FileNotFoundError):
        return f"{path}: weights file not found"
    if isinstance(error, IsADirectoryError) or os.path.isdir(path):
        return f"{path}: a folder, not a weights file"
    short = " ".join(text.split()).split(". ")[0][:200]
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return f"{path}: an empty file (0 bytes), not a PyTorch checkpoint"
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        return f"{path}: not a complete PyTorch checkpoint (truncated, damaged, or another kind of file: {type(error).__name__}: {short})"
    return f"{path}: cannot load weights ({type(error).__name__}: {short})"


def load_weights(path: str | os.PathLike, map_location: Any = None) -> Any:
    """``torch.load(path, map_location=..., weights_only=True)`` with errors that name the file
    (:class:`WeightsFileError`, see :func:`describe_weights_error`).

    Args:
        path: the weights file.
        map_location: where to put the tensors (``torch.load``'s argument).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        message = describe_weights_error(path, error)
        if _is_unpickling_refusal(error):
            raise WeightsFileError(message) from None  # torch's text recommends weights_only=False
        raise WeightsFileError(message) from error


def load_weights_into(network: torch.nn.Module, path: str | os.PathLike, map_location: Any = None) -> torch.nn.Module:
    """Load the state dict at ``path`` into ``network`` (strictly), with errors that name the file
    (:class:`WeightsFileError`): a file that is not plain weights, or weights of another network (summarised: how many
    tensors are missing, unexpected or of another shape, instead of torch's list of every key).

    Args:
        network: the network to load into.
        path: the weights file (a state dict).
        map_location: where to put the tensors (``torch.load``'s argument).

    Returns:
        ``network``.
    """
    state = load_weights(path, map_location)
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise WeightsFileError(_mismatch(os.fspath(path), error)) from error
    return network


def with_pretrained_weights(network: torch.nn.Module, path: str | os.PathLike | None = None) -> torch.nn.Module:
    """``network`` with the weights at ``path`` loaded (as nnU-Net's ``-pretrained_weights``), or as it is.

    Training configs use it for ``network_def`` (``--pretrained_weights models/model.pt`` fine-tunes or continues
    from shipped weights with a fresh optimiser and schedule); ``--resume True`` then still restores the run's own
    state on top.

    Args:
        network: the freshly built network.
        path: a state dict of the same network; ``None`` or ``""`` keeps the initialisation.
    """
    return load_weights_into(network, path, map_location="cpu") if path else network


def save_half_precision(source: str | os.PathLike, target: str | os.PathLike) -> dict[str, int]:
    """Write the state dict at ``source`` with its float32 tensors stored as float16, for shipping.

    The model zoo keeps weight files under 25 MB; a 32-base UNet is 31 MB in float32. ``load_state_dict`` copies
    float16 values into the float32 parameters of the network, so every loader (``CheckpointLoader``, the fold
    ensemble, MLflow, ``ckpt_export``) reads the file unchanged; the rounding (relative 5e-4) is far below what
    changes a label (checked on the validation split before a file ships, see the bundle README). A tensor with
    values beyond float16's range (+-65504, e.g. a batch-norm running variance) stays float32: a few hundred
    bytes, and no overflow to infinity.

    Args:
        source: a state dict saved by training (float32).
        target: where to write the float16 copy (atomically).

    Returns:
        ``{"tensors": ..., "halved": ..., "kept_float32": ...}``: how many tensors the file holds, how many were
        converted, and how many float32 tensors stayed float32 because float16 cannot hold them.
    """
    from monai_unet2.data.files import write_atomically

    state = load_weights(source, map_location="cpu")
    stored = {}
    for key, value in state.items():
        half = value.half() if value.dtype == torch.float32 else None
        fits = half is not None and bool(torch.isfinite(half).all() or not torch.isfinite(value).all())
        stored[key] = half if fits else value
    write_atomically(target, lambda tmp: torch.save(stored, tmp))
    float32 = [key for key, value in state.items() if value.dtype == torch.float32]
    halved = sum(stored[key].dtype == torch.float16 for key in float32)
    return {"tensors": len(state), "halved": halved, "kept_float32": len(float32) - halved}


def _mismatch(path: str, error: BaseException) -> str:
    """``load_state_dict``'s key-by-key report, summarised: how many tensors are missing, unexpected, reshaped."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    details = []
    for line in lines:
        head, _, rest = line.partition(" in state_dict:")
        if rest and head in ("Missing key(s)", "Unexpected key(s)"):
            keys = [key.strip(' ".') for key in rest.split(",") if key.strip(' ".')]
            details.append(f"{len(keys)} {head.split()[0].lower()} tensor(s) (e.g. {keys[0] if keys else '?'})")
    sizes = [line.removeprefix("size mismatch for ") for line in lines if line.startswith("size mismatch for ")]
    if sizes:
        details.append(f"{len(sizes)} tensor(s) of another shape (e.g. {sizes[0].rstrip('.')})")
    detail = "; ".join(details) if details else " ".join(str(error).split())[:300]
    return f"{path}: these weights do not fit the network of this config: {detail}"


class SafeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` whose failures name the file and what is wrong, in one line.

    Same arguments and behaviour as ``monai.handlers.CheckpointLoader`` (which loads with ``weights_only=True``); a
    file that would run code is refused without torch's advice to load it unsafely, and weights of another network
    (missing, unexpected or differently shaped tensors) are summarised instead of listed key by key.

    Args:
        load_path: the checkpoint file.
        load_dict: objects to restore (``{"model": @network}``).
        name, map_location, strict, strict_shape: those of ``CheckpointLoader``.
    """

    rank_zero_only = False  # every rank loads the weights

    def __call__(self, engine: Engine) -> None:
        """Load the checkpoint into ``load_dict`` (at ``Events.STARTED`` of ``engine``)."""
        path = os.fspath(self.load_path)
        try:
            super().__call__(engine)
        except Exception as error:
            if _is_unpickling_refusal(error):
                raise WeightsFileError(
                    describe_weights_error(path, error)
                ) from None  # torch advises weights_only=False
            if "in loading state_dict" in str(error):
                raise WeightsFileError(_mismatch(path, error)) from error
            raise WeightsFileError(describe_weights_error(path, error)) from error
