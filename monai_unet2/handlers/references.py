"""A config component that stands for a handler defined elsewhere in the bundle config.

MONAI Label rewrites a bundle's ``train#handlers`` list before training: it calls ``.get("_target_")`` on every
entry and inserts its own ``CheckpointLoader`` at the front, so every entry must be a dict, and references into the
list by position would shift. A handler that another item also needs, such as the model registry whose state is
part of ``training_state``, is therefore defined once outside the list and entered into it as
``{"_target_": "monai_unet2.handlers.handler_reference", "handler": "@model_registry"}``: a dict for MONAI Label,
the very same object for the trainer. Handlers that nothing else references are written inline in the list.
"""

from __future__ import annotations

from typing import Any

__all__ = ["handler_reference"]


def handler_reference(handler: Any) -> Any:
    """Return ``handler`` itself: the dict form of a reference (see the module docstring).

    Args:
        handler: the handler instance the config references (``"@model_registry"``).
    """
    return handler
