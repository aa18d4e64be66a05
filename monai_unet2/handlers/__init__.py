"""monai_unet2.handlers: small ignite/MONAI handler helpers used by the bundles."""

from .metrics import class_output_transform
from .references import handler_entry
