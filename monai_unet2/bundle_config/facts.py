"""Read a bundle's dataset facts from the two files that state them, for expressions in its configs.

MONAI can only share values between config files through ``%file.json#id`` macros, which resolve against the
working directory, and MONAI Label reads ``inference.json`` and ``train.json`` each on its own. So every config of
a bundle reads the facts from the bundle folder instead, through ``@bundle_root`` (which MONAI Label overrides):

- ``configs/metadata.json``: the label values and names and the input channels, as MONAI's bundle specification
  and MONAI Label expect them (``network_data_format`` ``channel_def``);
- ``configs/plans.json``: every other fact the pipelines depend on (slice axis, context slices, orientation,
  spacing, intensity normalisation, window size, network), with the dataset fingerprint and the reason for each
  decision, so that a dataset planner can write it; see docs/user_guide.md for its keys.

A config exposes each fact as a plain id (``"context_slices": "$@plans['context_slices']"``), so a command-line
override such as ``--context_slices 0`` reaches every component that uses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "METADATA_FILE",
    "PLANS_FILE",
    "Plans",
    "input_channel_names",
    "label_names",
    "read_metadata",
    "read_plans",
    "view_models_dir",
    "view_plan",
]

#: the file of dataset facts and pipeline decisions, in a bundle's ``configs/`` folder
PLANS_FILE = "plans.json"
#: MONAI's bundle metadata, in a bundle's ``configs/`` folder
METADATA_FILE = "metadata.json"


class Plans(dict):
    """The content of ``configs/plans.json``; a missing key is a ``KeyError`` that names the file and the key."""

    def __init__(self, content: Mapping[str, Any], path: str | os.PathLike) -> None:
        super().__init__(content)
        self.path = os.fspath(path)

    def __missing__(self, key: str) -> Any:
        raise KeyError(f"{self.path} has no '{key}' (keys: {', '.join(sorted(self))}).")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path} does not exist: is --bundle_root the bundle folder?") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(content).__name__}.")
    return content


def read_plans(bundle_root: str | os.PathLike) -> Plans:
    """The dataset facts and decisions of the bundle at ``bundle_root`` (``configs/plans.json``).

    Args:
        bundle_root: the bundle folder (``@bundle_root`` in a config).
    """
    path = Path(bundle_root) / "configs" / PLANS_FILE
    return Plans(_read_json(path), path)


def view_plan(plans: Plans, view: str | None = None) -> dict[str, Any]:
    """``slice_axis`` and ``roi_size`` of the view a training or inference uses.

    ``None`` is the primary view (the plans' own ``slice_axis`` and ``roi_size``); a name is one of the extra views
    of ``plans["views"]`` (multi-view 2.5D, see :class:`monai_unet2.inferers.MultiViewInferer`).

    Args:
        plans: the bundle's plans (``@plans``).
        view: ``None`` or the name of an extra view (``--view coronal``).

    Raises:
        ValueError: an unknown view name (the message lists the plans' views) or a malformed view.
    """
    if view is None or view == "":
        return {"slice_axis": plans["slice_axis"], "roi_size": plans["roi_size"]}
    from monai_unet2.inferers.multi_view import check_views

    views = check_views(plans.get("views"), where=f"{getattr(plans, 'path', 'plans')}: views")
    if view not in views:
        known = ", ".join(views) or "none"
        raise ValueError(f"--view {view}: {getattr(plans, 'path', 'plans')} has no such view (views: {known}).")
    return views[view]


def view_models_dir(bundle_root: str | os.PathLike, view: str | None = None) -> str:
    """The folder a view's weights are trained into and read from: ``models/`` or ``models/<view>/``.

    Args:
        bundle_root: the bundle folder (``@bundle_root``).
        view: ``None`` for the primary view, or the name of an extra view.
    """
    models = os.path.join(os.fspath(bundle_root), "models")
    return os.path.join(models, view) if view else models


def read_metadata(bundle_root: str | os.PathLike) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json``.

    Args:
        bundle_root: the bundle folder (``@bundle_root`` in a config).
    """
    return _read_json(Path(bundle_root) / "configs" / METADATA_FILE)


def _channel_def(bundle_root: str | os.PathLike, direction: str) -> dict[str, str]:
    """``channel_def`` of the first input or output of ``network_data_format`` (the one MONAI Label uses)."""
    metadata = read_metadata(bundle_root)
    where = f"{Path(bundle_root) / 'configs' / METADATA_FILE}: network_data_format.{direction}"
    try:
        name, tensor = next(iter(metadata["network_data_format"][direction].items()))
        channel_def = tensor["channel_def"]
    except (KeyError, StopIteration, AttributeError) as error:
        raise ValueError(f"{where} needs an entry with a channel_def.") from error
    values = sorted(int(value) for value in channel_def)
    if values != list(range(len(values))):
        raise ValueError(f"{where}.{name}.channel_def keys must be 0, 1, ..., n-1; got {sorted(channel_def)}.")
    return {str(value): str(channel_def[str(value)]) for value in values}


def label_names(bundle_root: str | os.PathLike) -> dict[str, str]:
    """Label value -> name, background included: the output ``channel_def`` of ``metadata.json``.

    This is what MONAI Label shows (every name but ``background``); configs derive ``num_classes`` as its length,
    the label values a training label may hold, the per-class metrics and the segment names of DICOM SEG output.

    Args:
        bundle_root: the bundle folder (``@bundle_root`` in a config).

    Raises:
        ValueError: when the values are not 0, 1, ..., n-1.
    """
    return _channel_def(bundle_root, "outputs")


def input_channel_names(bundle_root: str | os.PathLike) -> dict[str, str]:
    """Input channel index -> name (e.g. ``{"0": "T1c", "1": "FLAIR"}``): the input ``channel_def`` of
    ``metadata.json``; its length is the number of channels an image has.

    Args:
        bundle_root: the bundle folder (``@bundle_root`` in a config).
    """
    return _channel_def(bundle_root, "inputs")
