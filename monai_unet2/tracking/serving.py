"""The pyfunc model behind ``mlflow models serve``: a bundle's preprocessing, slice inferer and post-processing.

Request (``POST /invocations``, ``Content-Type: application/json``)::

    {"inputs": {"image": <nested list, H x W x D>, "affine": <4 x 4 nested list, optional>}}

Response: ``{"predictions": <nested list H x W x D of integer labels>}`` in the input's voxel grid (the bundle's
``Invertd`` undoes orientation and spacing). The image goes through the bundle's own ``inference.json`` pipeline
without its file loader and writer, exactly as a file passed to the bundle would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mlflow.pyfunc import PythonModel

__all__ = ["BundleSegmentationModel", "segment_volume"]


def segment_volume(components: dict[str, Any], image: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
    """Run a bundle's ``preprocessing`` → ``inferer`` → ``postprocessing`` on one volume.

    Args:
        components: ``network`` (eval mode), ``preprocessing``, ``inferer``, ``postprocessing``, ``device``.
        image: (H, W, D) intensities, or (1, H, W, D).
        affine: 4x4 voxel-to-world matrix (identity when ``None``).

    Returns:
        (H, W, D) integer label volume.
    """
    from monai.data import MetaTensor, decollate_batch

    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"inputs.image must be a 3D volume (H x W x D), got shape {array.shape}.")
    matrix = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"inputs.affine must be 4 x 4, got shape {matrix.shape}.")
    volume = MetaTensor(
        torch.from_numpy(array),
        affine=torch.from_numpy(matrix),
        meta={"original_channel_dim": "no_channel", "filename_or_obj": "request", "spatial_shape": array.shape},
    )
    data = components["preprocessing"]({"image": volume})
    device = components["device"]
    with torch.no_grad():
        batch = data["image"].unsqueeze(0).to(device)
        data["pred"] = decollate_batch(components["inferer"](batch, components["network"]))[0]
    result = components["postprocessing"](data)["pred"]
    labels = result.detach().cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)
    return labels.reshape(labels.shape[-3:]).astype(np.int32)


class BundleSegmentationModel(PythonModel):
    """Pyfunc model built from the ``bundle`` artifact: ``predict({"image": HxWxD, "affine": 4x4})`` → labels."""

    def load_context(self, context: Any) -> None:
        """Build network (weights with ``weights_only=True``), transforms and inferer from the bundle's configs."""
        from .bundle_model import BUNDLE_ARTIFACT, build_inference_parser, load_model

        bundle_dir = context.artifacts[BUNDLE_ARTIFACT]
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        parser = build_inference_parser(bundle_dir, device)
        self.components = {
            "network": load_model(bundle_dir, device=device),
            "preprocessing": parser.get_parsed_content("preprocessing"),
            "inferer": parser.get_parsed_content("inferer"),
            "postprocessing": parser.get_parsed_content("postprocessing"),
            "device": device,
        }

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Segment one volume given as ``{"image": array, "affine": array (optional)}``."""
        if not isinstance(model_input, dict) or "image" not in model_input:
            raise ValueError('expected {"inputs": {"image": <H x W x D nested list>, "affine": <4 x 4, optional>}}')
        return segment_volume(self.components, model_input["image"], model_input.get("affine"))
