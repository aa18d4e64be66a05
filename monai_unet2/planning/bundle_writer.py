"""Write a planned bundle: ``plans.json``, ``metadata.json`` and ``splits.json`` from the plan, the other configs
as they ship with the package (``templates/``), a README with every decision and its reason, a LICENSE.

Every config other than the three planned files is the same for every bundle of the volume pipeline: it reads the
facts through ``@bundle_root`` (``monai_unet2.bundle_config``), names its MLflow experiment and registered model
after ``metadata.json`` ``name``, and finds its folds in ``splits.json``. So a planned bundle needs no edit, and
the shipped hippocampus bundle's configs are these files (see docs/user_guide.md, "Planning a bundle").
"""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_unet2.data import write_atomically

from .planner import Plan
from .readme import GENERATED_MARK, plan_readme

__all__ = ["TEMPLATES", "TEMPLATE_FILES", "BundleExistsError", "bundle_metadata", "write_bundle"]

TEMPLATES = Path(__file__).with_name("templates")
#: configs copied unchanged into every planned bundle
TEMPLATE_FILES = (
    "train.json",
    "inference.json",
    "evaluate.json",
    "multi_gpu_train.json",
    "multi_gpu_inference.json",
    "multi_gpu_evaluate.json",
    "logging.conf",
)
SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LICENSE_TEXT = """Code and configuration: Apache License 2.0 (monai_unet2, https://www.apache.org/licenses/LICENSE-2.0).

Weights trained on the dataset "{dataset}" carry that dataset's licence and terms of use; check them before
sharing the weights or this bundle with them.
"""


class BundleExistsError(FileExistsError):
    """The bundle folder already holds a plan; pass ``overwrite`` to replace its configs."""


def _version(name: str) -> str:
    try:
        return package_metadata.version(name)
    except package_metadata.PackageNotFoundError:
        return "unknown"


def bundle_metadata(plan: Plan, name: str) -> dict[str, Any]:
    """``metadata.json`` of a planned bundle: labels and input channels (``channel_def``), MONAI's bundle fields.

    Args:
        plan: the plan.
        name: the bundle name (its folder name): the MLflow experiment and registered model are named after it.
    """
    channels = plan.plans["fingerprint"]["channels"]
    modalities = sorted({channel["modality"] for channel in channels.values()})
    modality = modalities[0] if len(modalities) == 1 else "/".join(modalities)
    foreground = [label for value, label in plan.labels.items() if value != "0"]
    channel_list = ", ".join(f"{c['name']} ({c['modality']})" for c in channels.values())
    network = plan.plans["network"]
    context = int(plan.plans["context_slices"])
    in_channels = (2 * context + 1) * len(plan.channel_names)
    data_types = {"dicom" if os.path.isdir(str(case["image"])) else "nifti" for case in plan.dataset.training[:20]}

    def tensor(kind: str, count: int, channel_def: dict[str, str]) -> dict[str, Any]:
        return {
            "type": "image",
            "format": kind,
            "modality": modality,
            "num_channels": count,
            "spatial_shape": ["*", "*", "*"],
            "dtype": "float32",
            "value_range": [],
            "is_patch_data": False,
            "channel_def": channel_def,
        }

    return {
        "schema": SCHEMA,
        "version": "0.1.0",
        "changelog": {
            "0.1.0": f"planned by monai_unet2 plan on {plan.dataset.name} ({len(plan.dataset.training)} cases)"
        },
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {
            "monai_unet2": _version("monai-unet2"),
            "nibabel": _version("nibabel"),
            "pydicom": _version("pydicom"),
            "mlflow": _version("mlflow"),
        },
        "name": name,
        "task": f"Segmentation of {', '.join(foreground)} in {modality} volumes ({plan.dataset.name})",
        "description": (
            f"A 2D {network['_target_'].rsplit('.', 1)[-1]} ({network.get('features', '')} base features) fed with "
            f"2.5D input ({context} neighbouring slice(s) on each side of every slice along axis "
            f"{plan.plans['slice_axis']}, {in_channels} input channels), planned by monai_unet2 from the dataset's "
            "fingerprint; inference runs it over every slice with monai_unet2.inferers.SlidingWindowSliceInferer "
            "(every trained fold averaged) and writes label volumes in the input's space. See docs/README.md."
        ),
        "authors": "monai_unet2 plan",
        "copyright": "Copyright (c) the bundle's authors",
        "data_source": f"{plan.dataset.name} ({plan.dataset.layout} layout, {len(plan.dataset.training)} training cases)",
        "data_type": "/".join(sorted(data_types)),
        "image_classes": f"{len(plan.channel_names)} channel(s): {channel_list}",
        "label_classes": ", ".join(f"{value} {label}" for value, label in plan.labels.items()),
        "pred_classes": f"{len(plan.labels)} channels (logits), one per label value",
        "eval_metrics": {},
        "intended_use": "Research only; not for clinical diagnosis",
        "references": [
            "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI 2015.",
            "Isensee F. et al. nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation. Nature Methods 18, 203-211 (2021).",
            "Kervadec H. et al. Boundary loss for highly unbalanced segmentation. MIDL 2019.",
        ],
        "network_data_format": {
            "inputs": {"image": tensor("magnitude", len(plan.channel_names), dict(plan.channel_names))},
            "outputs": {"pred": tensor("segmentation", len(plan.labels), dict(plan.labels))},
        },
    }


def format_json(content: Any, indent: int = 0, width: int = 100) -> str:
    """JSON with objects one key per line and anything that fits in ``width`` characters on one line, the way the
    shipped configs are written (``json.dumps(indent=4)`` puts every list element on its own line)."""
    flat = json.dumps(content)
    if not isinstance(content, (dict, list)) or (len(flat) + indent <= width and indent > 0):
        return flat
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(content, list):
        items = [inner + format_json(item, indent + 4, width) for item in content]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    items = [f"{inner}{json.dumps(key)}: {format_json(value, indent + 4, width)}" for key, value in content.items()]
    return "{\n" + ",\n".join(items) + "\n" + pad + "}"


def _write_json(path: Path, content: Any) -> None:
    text = format_json(content) + "\n"
    write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def write_bundle(plan: Plan, bundle_dir: str | os.PathLike, overwrite: bool = False) -> dict[str, Path]:
    """Write the planned bundle into ``bundle_dir``; models, data and a hand-written README are left alone.

    Args:
        plan: the plan.
        bundle_dir: the bundle folder (created); its name becomes the bundle name.
        overwrite: replace the configs of a bundle that already has a ``plans.json``.

    Returns:
        what was written, by role (``plans``, ``metadata``, ``splits``, ``readme``, ...).

    Raises:
        BundleExistsError: the folder already holds a plan and ``overwrite`` is off.
        ValueError: a folder name that cannot name an MLflow experiment and model.
    """
    root = Path(bundle_dir)
    name = root.resolve().name
    if not _NAME.match(name):
        raise ValueError(f"bundle folder name {name!r}: use letters, digits, '_', '-' and '.' (it names the model)")
    configs = root / "configs"
    if (configs / "plans.json").exists() and not overwrite:
        raise BundleExistsError(f"{configs / 'plans.json'} exists: pass --overwrite to replace the bundle's configs")
    configs.mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "docs").mkdir(exist_ok=True)
    written = {
        "plans": configs / "plans.json",
        "metadata": configs / "metadata.json",
        "splits": configs / "splits.json",
    }
    _write_json(written["plans"], plan.plans)
    _write_json(written["metadata"], bundle_metadata(plan, name))
    _write_json(written["splits"], plan.splits)
    for template in TEMPLATE_FILES:
        shutil.copyfile(TEMPLATES / template, configs / template)
        written[template] = configs / template
    readme = root / "docs" / "README.md"
    if readme.exists() and GENERATED_MARK not in readme.read_text():
        readme = root / "docs" / "plan.md"
    text = plan_readme(plan, name)
    write_atomically(readme, lambda temporary: Path(temporary).write_text(text))
    written["readme"] = readme
    license_file = root / "LICENSE"
    if not license_file.exists():
        license_file.write_text(LICENSE_TEXT.format(dataset=plan.dataset.name))
        written["license"] = license_file
    return written
