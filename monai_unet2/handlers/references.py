"""Let a handler defined once elsewhere in a bundle config appear as an entry of a ``handlers`` list.

MONAI Label rewrites a bundle's ``train#handlers`` list before training: it calls ``.get("_target_")`` on every
entry and inserts its own ``CheckpointLoader`` at the front. A bare reference such as ``"@mlflow_handlers#trainer"``
is a string there and breaks it, and references into the list by position shift. Wrapping the reference in a
component, ``{"_target_": "monai_unet2.handlers.handler_entry", "handler": "@mlflow_handlers#trainer"}``, keeps
the entry a dict for MONAI Label while the parsed list still holds the very same handler object.
"""

from __future__ import annotations

from typing import Any

__all__ = ["handler_entry"]


def handler_entry(handler: Any) -> Any:
    """Return ``handler`` unchanged: the config component form of a reference (see the module docstring).

    Args:
        handler: the handler instance the config references.
    """
    return handler
