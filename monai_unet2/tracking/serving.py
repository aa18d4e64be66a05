"""The pyfunc model behind ``mlflow models serve``: a bundle's preprocessing, slice inferer and post-processing.

Request (``POST /invocations``, ``Content-Type: application/json``), for a volume bundle (hippocampus)::

    {"inputs": {"image": <nested list, H x W x D>, "affine": <4 x 4 nested list>}}

and for an image bundle (DRIVE, ``spatial_shape`` of two sizes in its metadata)::

    {"inputs": {"image": <nested list, rows x columns x channels, e.g. numpy.asarray(PIL.Image.open(...))>}}

Response: ``{"predictions": <nested list of integer labels>}`` on the input's grid: H x W x D for a volume (the
bundle's ``Invertd`` undoes orientation and spacing), rows x columns for an image. The input goes through the
bundle's own ``inference.json`` pipeline without its file loader and writer, exactly as a file passed to the bundle
would, so the answer equals the bundle's own output for the same file. Each registered version carries the
signature of :func:`serving_signature`, so MLflow checks shapes and dtypes before the model sees the request.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

__all__ = ["BundleSegmentationModel", "InvalidRequestError", "segment_image", "segment_volume", "serving_signature"]

logger = logging.getLogger(__name__)


class InvalidRequestError(MlflowException, ValueError):
    """A request the model cannot segment: MLflow's server answers it with a 400 and this message; Python callers
    of ``predict`` can catch it as the ``ValueError`` it is."""


def serving_signature(metadata: dict[str, Any]) -> tuple[Any, dict[str, np.ndarray]]:
    """The MLflow signature and a small input example of a bundle's served model, from its ``metadata.json``.

    A volume bundle (``spatial_shape`` of three sizes) takes ``image`` float32 ``(-1, -1, -1)`` and ``affine`` float64
    ``(4, 4)``; an image bundle takes ``image`` uint8 ``(-1, -1, channels)`` (``(-1, -1)`` for one channel), as
    ``numpy.asarray(PIL.Image)`` gives it. Both answer int32 labels on the input's grid. MLflow checks requests
    against it (shape and dtype; JSON bodies are cast to these dtypes) and answers a clear 400 otherwise.

    Args:
        metadata: the bundle's parsed ``metadata.json``.

    Returns:
        ``(ModelSignature, input example)``; the example is small (a 16 x 16 x 8 volume, a 32 x 32 image), since
        MLflow runs it through the model when the version is logged.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    image = next(iter(metadata.get("network_data_format", {}).get("inputs", {}).values()), {})
    channels = int(image.get("num_channels", 1))
    if len(image.get("spatial_shape", [0, 0, 0])) == 2:
        shape = (-1, -1) if channels == 1 else (-1, -1, channels)
        inputs = Schema([TensorSpec(np.dtype(np.uint8), shape, "image")])
        outputs = Schema([TensorSpec(np.dtype(np.int32), (-1, -1))])
        example = {"image": np.zeros((32, 32) if channels == 1 else (32, 32, channels), dtype=np.uint8)}
        return ModelSignature(inputs=inputs, outputs=outputs), example
    inputs = Schema(
        [TensorSpec(np.dtype(np.float32), (-1, -1, -1), "image"), TensorSpec(np.dtype(np.float64), (4, 4), "affine")]
    )
    outputs = Schema([TensorSpec(np.dtype(np.int32), (-1, -1, -1))])
    example = {"image": np.zeros((16, 16, 8), dtype=np.float32), "affine": np.eye(4)}
    return ModelSignature(inputs=inputs, outputs=outputs), example


def _run_pipeline(components: dict[str, Any], image: Any) -> np.ndarray:
    """``preprocessing`` → ``inferer`` → ``postprocessing`` on one ``MetaTensor``; the labels as an array."""
    from monai.data import decollate_batch

    data = components["preprocessing"]({"image": image})
    with torch.no_grad():
        batch = data["image"].unsqueeze(0).to(components["device"])
        data["pred"] = decollate_batch(components["inferer"](batch, components["network"]))[0]
    result = components["postprocessing"](data)["pred"]
    return result.detach().cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)


def segment_volume(components: dict[str, Any], image: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
    """Run a bundle's ``preprocessing`` → ``inferer`` → ``postprocessing`` on one volume.

    Args:
        components: ``network`` (eval mode), ``preprocessing``, ``inferer``, ``postprocessing``, ``device``.
        image: (H, W, D) intensities, or (1, H, W, D).
        affine: 4x4 voxel-to-world matrix (identity when ``None``).

    Returns:
        (H, W, D) integer label volume.
    """
    from monai.data import MetaTensor

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
    labels = _run_pipeline(components, volume)
    return labels.reshape(labels.shape[-3:]).astype(np.int32)


def segment_image(components: dict[str, Any], image: np.ndarray) -> np.ndarray:
    """Run a 2D bundle's ``preprocessing`` → ``inferer`` → ``postprocessing`` on one image.

    The array is laid out as MONAI's ``PILReader`` lays out a file (columns first), so the network sees exactly
    what the bundle's own inference of that file sees, and the result is turned back to rows x columns.

    Args:
        components: ``network`` (eval mode), ``preprocessing``, ``inferer``, ``postprocessing``, ``device``,
            ``num_channels`` (the bundle's input channels).
        image: (rows, columns, channels) as ``numpy.asarray(PIL.Image)`` gives it, or (rows, columns) for one
            channel.

    Returns:
        (rows, columns) integer label image.
    """
    from monai.data import MetaTensor

    array = np.asarray(image, dtype=np.float32)
    channels = components["num_channels"]
    expected = (2,) if channels == 1 else (3,)
    if array.ndim not in expected or (array.ndim == 3 and array.shape[-1] != channels):
        layout = "rows x columns" if channels == 1 else f"rows x columns x {channels}"
        raise ValueError(f"inputs.image must be a 2D image ({layout}), got shape {array.shape}.")
    columns_first = np.ascontiguousarray(np.swapaxes(array, 0, 1))
    image_tensor = MetaTensor(
        torch.from_numpy(columns_first),
        meta={
            "original_channel_dim": -1 if array.ndim == 3 else "no_channel",
            "filename_or_obj": "request",
            "spatial_shape": columns_first.shape[:2],
        },
    )
    labels = _run_pipeline(components, image_tensor)
    return np.swapaxes(labels.reshape(labels.shape[-2:]), 0, 1).astype(np.int32)


@contextmanager
def _without_type_hint_advice() -> Iterator[None]:
    """Drop MLflow's advice to add type hints to ``predict`` while a ``PythonModel`` subclass is defined.

    ``predict`` has no type hints on purpose: the request is a dict of tensors, checked by the explicit tensor
    signature every version is logged with (:func:`serving_signature`); with hints MLflow would replace that check
    by one inferred from them. MLflow gives its advice at class definition, in raw ANSI colours, under a
    ``simplefilter("once")`` of its own that no outer warnings filter can override, hence the ``showwarning`` hook.
    """
    shown = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if "Add type hints to the `predict` method" not in str(message):
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


with _without_type_hint_advice():

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
            metadata = json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())
            image_format = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {})
            self.image_dims = len(image_format.get("spatial_shape", [0, 0, 0]))
            self.components["num_channels"] = int(image_format.get("num_channels", 1))

        def predict(self, context, model_input, params=None):
            """Segment one volume ``{"image": array, "affine": array}`` or one 2D image ``{"image": array}``.

            A request that cannot be segmented (wrong shape, missing key) is answered with MLflow's 400 and a message
            that says what was expected; a failure of the model itself with a 500 whose message names the error type
            only: the traceback, which holds the server's paths, goes to the server log.
            """
            from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

            try:
                return self._segment(model_input)
            except ValueError as error:
                raise InvalidRequestError(str(error), error_code=INVALID_PARAMETER_VALUE) from None
            except Exception as error:
                logger.exception("segmentation failed")
                raise MlflowException(
                    f"segmentation failed on the server ({type(error).__name__}); the server log has the details",
                    error_code=INTERNAL_ERROR,
                ) from None

        def _segment(self, model_input: Any) -> np.ndarray:
            if not isinstance(model_input, dict) or "image" not in model_input:
                if self.image_dims == 2:
                    raise ValueError('expected {"inputs": {"image": <rows x columns x channels nested list>}}')
                raise ValueError('expected {"inputs": {"image": <H x W x D nested list>, "affine": <4 x 4>}}')
            if self.image_dims == 2:
                return segment_image(self.components, model_input["image"])
            return segment_volume(self.components, model_input["image"], model_input.get("affine"))
