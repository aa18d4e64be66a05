"""``--override key=value``: a planning decision set by hand, applied over the planner's and recorded as such.

nnU-Net's plans can only be changed by editing the generated JSON afterwards (its issues #2951, #1707 ask for more);
here every decision of ``plans.json`` can be set at planning time, and the plan records both the value given and
what the planner would have chosen, so the bundle says which decisions were not the planner's.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["OVERRIDABLE", "apply_overrides", "parse_overrides"]

#: the plans.json keys an override may set (dotted paths reach inside, e.g. ``network.features``)
OVERRIDABLE = (
    "dataset_dir",
    "orientation",
    "spacing",
    "slice_axis",
    "context_slices",
    "normalization",
    "roi_size",
    "views",
    "network",
    "volumes_per_batch",
    "slices_per_volume",
    "learning_rate",
    "epoch_length",
    "max_epochs",
    "val_interval",
)


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["max_epochs=30", "network.features=16", "spacing=[1, 1, 3]"]`` -> ``{"max_epochs": 30, ...}``.

    Values are JSON (numbers, lists, objects, ``true``/``false``/``null``); anything that is not valid JSON is
    taken as a string (``orientation=LPS``).

    Raises:
        ValueError: an item without ``=`` or a key that is not a planning decision.
    """
    overrides: dict[str, Any] = {}
    for item in items or ():
        key, separator, text = item.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ValueError(f"--override {item!r}: expected key=value, e.g. max_epochs=30")
        if key.split(".")[0] not in OVERRIDABLE:
            raise ValueError(f"--override {key}: not a planning decision; one of {', '.join(OVERRIDABLE)}")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text.strip()
    return overrides


def apply_overrides(plans: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``plans`` with ``overrides`` set, each reason replaced by what was set and what was planned.

    Args:
        plans: the planned decisions, with ``reasons``.
        overrides: dotted key -> value.
    """
    result = copy.deepcopy(dict(plans))
    reasons = result.setdefault("reasons", {})
    for key, value in overrides.items():
        path = key.split(".")
        target = result
        for part in path[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        planned = target.get(path[-1], "(not set)")
        target[path[-1]] = value
        top = path[0]
        planned_reason = reasons.get(top)
        note = f"set by --override {key}={json.dumps(value)}; planned: {json.dumps(planned)}"
        reasons[top] = f"{note}, because {planned_reason}" if planned_reason else note
    result["overrides"] = {**result.get("overrides", {}), **dict(overrides)}
    return result
