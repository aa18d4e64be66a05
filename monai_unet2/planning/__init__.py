"""monai_unet2.planning: a dataset's fingerprint -> ``plans.json`` -> a complete bundle (``python -m monai_unet2 plan``).

- :func:`plan_dataset`: read the dataset (:func:`~monai_unet2.data.read_dataset`), fingerprint it
  (:func:`fingerprint_dataset`), take every decision with its reason (:mod:`.decisions`, :mod:`.timing`), apply the
  ``--override`` s (:func:`apply_overrides`) and make the folds.
- :func:`write_bundle`: ``plans.json``, ``metadata.json``, ``splits.json``, the packaged configs, README, LICENSE.

See docs/user_guide.md ("Planning a bundle").
"""

from .bundle_writer import TEMPLATE_FILES, TEMPLATES, BundleExistsError, bundle_metadata, write_bundle
from .fingerprint import case_geometry, channel_modality, fingerprint_dataset
from .overrides import OVERRIDABLE, apply_overrides, parse_overrides
from .planner import PLANS_VERSION, Plan, plan_dataset

__all__ = [
    "OVERRIDABLE",
    "PLANS_VERSION",
    "TEMPLATES",
    "TEMPLATE_FILES",
    "BundleExistsError",
    "Plan",
    "apply_overrides",
    "bundle_metadata",
    "case_geometry",
    "channel_modality",
    "fingerprint_dataset",
    "parse_overrides",
    "plan_dataset",
    "write_bundle",
]
