"""The fully resolved bundle configuration of a run, as a JSON document for MLflow.

A bundle run's configuration is the config files plus the command-line overrides (``--max_epochs 1``) plus values
computed by expressions (``$@bundle_root + '/models'``). Only the live ``monai.bundle.ConfigParser`` knows all
three, and a config expression has no name for it, so :func:`active_config_parser` finds the parser that is
evaluating the expression on the call stack. MONAI's own ``--tracking mlflow`` dumps ``parser.get()`` (the raw,
unresolved config); :func:`config_snapshot` adds every value the parser has resolved that is plain JSON.
"""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["active_config_parser", "config_snapshot"]


def active_config_parser() -> ConfigParser | None:
    """The ``ConfigParser`` whose expression is being evaluated (``None`` when not called from a config).

    Use it in a bundle config as ``"config_parser": "$monai_unet2.tracking.active_config_parser()"``.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigParser):
                return candidate
            frame = frame.f_back
    finally:
        del frame
    return None


def _plain_json(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if depth < 4 and isinstance(value, (list, tuple)):
        return all(_plain_json(item, depth + 1) for item in value)
    if depth < 4 and isinstance(value, dict):
        return all(isinstance(key, str) and _plain_json(item, depth + 1) for key, item in value.items())
    return False


def config_snapshot(parser: ConfigParser) -> dict[str, Any]:
    """``{"config": <config with overrides>, "resolved": {id: value}}`` for a parser mid-run.

    ``resolved`` holds every config id the parser has evaluated so far whose value is plain JSON (numbers, strings,
    lists of them), e.g. ``"ckpt_dir": "/abs/models"``, ``"train#trainer#max_epochs": 1``; objects (networks,
    datasets) are left out, and nothing is evaluated that the run has not evaluated itself.

    Args:
        parser: the bundle's parser, e.g. from :func:`active_config_parser`.
    """
    resolved = {}
    for config_id, value in parser.ref_resolver.resolved_content.items():
        if isinstance(config_id, str) and _plain_json(value):
            resolved[config_id] = list(value) if isinstance(value, tuple) else value
    return {"config": json.loads(json.dumps(parser.get(), default=str)), "resolved": dict(sorted(resolved.items()))}
