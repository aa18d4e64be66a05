"""Segmentation outputs: their names after the input, which inputs still need them, and writing one label map in
each output format (NIfTI, PNG, DICOM SEG) to finished files only.

MONAI's ``SaveImaged`` writes straight to the final name (an interrupted run leaves a truncated ``.nii.gz`` that
looks finished), names files ``<output_dir>/<stem>/<stem>_<postfix>`` by default, cannot skip finished cases on a
re-run and has no DICOM SEG output. :class:`SegmentationWriter` keeps MONAI's writers (``NibabelWriter``,
``PILWriter``) for the encoding and adds atomic writing (:func:`~monai_unet2.data.files.write_atomically`), flat
naming after the input (:func:`output_paths`), resume (:func:`pending_inputs`) and DICOM SEG output
(:func:`~monai_unet2.data.dicom_seg.build_dicom_seg`). The dictionary transform around it is
:class:`~monai_unet2.transforms.SaveSegmentationd`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike
from monai.data import NibabelWriter, PILWriter
from monai.utils import MetaKeys

from monai_unet2.data.dicom_seg import HIGHDICOM_MISSING, build_dicom_seg, highdicom_available
from monai_unet2.data.files import ensure_output_dir, write_atomically
from monai_unet2.data.seg_description import SegDescription

__all__ = ["OUTPUT_FORMATS", "SegmentationWriter", "output_paths", "pending_inputs"]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("nifti", "dicom_seg", "png")
_KNOWN_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".nrrd", ".mha")


def _input_stem(input_path: str | os.PathLike) -> str:
    path = os.path.normpath(os.fspath(input_path))
    name = os.path.basename(path)
    if os.path.isdir(path):
        return name
    for suffix in _KNOWN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_dicom_input(input_path: str | os.PathLike) -> bool:
    path = os.fspath(input_path)
    return os.path.isdir(path) or path.lower().endswith(".dcm")


def output_paths(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    output_postfix: str = "seg",
    output_format: str = "nifti",
) -> list[str]:
    """The files :class:`~monai_unet2.transforms.SaveSegmentationd` writes for one input, in writing order.

    ``<stem>_<postfix>.nii.gz`` for NIfTI (``x.nii.gz`` -> ``x_seg.nii.gz``, a DICOM folder ``series7/`` ->
    ``series7_seg.nii.gz``), ``<stem>_<postfix>.png`` for PNG, and for ``dicom_seg`` the NIfTI plus, for DICOM
    inputs, ``<folder>_<postfix>.dcm``.

    Args:
        input_path: the input image file or DICOM series folder (``filename_or_obj`` of its metadata).
        output_dir: the output folder.
        output_postfix: appended to the input's name after an underscore (empty: no postfix).
        output_format: ``"nifti"``, ``"dicom_seg"`` or ``"png"``.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    name = _input_stem(input_path) + (f"_{output_postfix}" if output_postfix else "")
    base = os.path.join(os.fspath(output_dir), name)
    if output_format == "png":
        return [base + ".png"]
    paths = [base + ".nii.gz"]
    if output_format == "dicom_seg" and _is_dicom_input(input_path):
        paths.append(base + ".dcm")
    return paths


def pending_inputs(
    datalist: Iterable[Mapping[str, Any] | str],
    output_dir: str | os.PathLike,
    output_postfix: str = "seg",
    output_format: str = "nifti",
    image_key: str = "image",
) -> list:
    """The datalist entries whose outputs are not all written yet, so a re-run segments only those.

    Use it on the inference datalist (before the expensive part) together with ``resume=True`` of
    :class:`~monai_unet2.transforms.SaveSegmentationd`; temporary files of an interrupted write do not count as outputs.

    Args:
        datalist: ``{"image": path, ...}`` entries (or plain paths).
        output_dir, output_postfix, output_format: as given to :class:`~monai_unet2.transforms.SaveSegmentationd`.
        image_key: key of the input path in the entries.
    """
    pending, done = [], 0
    for entry in datalist:
        path = entry[image_key] if isinstance(entry, Mapping) else entry
        if all(os.path.isfile(p) for p in output_paths(path, output_dir, output_postfix, output_format)):
            done += 1
        else:
            pending.append(entry)
    if done:
        logger.info("%d of %d inputs already have their outputs in %s", done, done + len(pending), output_dir)
    return pending


class SegmentationWriter:
    """Write label maps in the input's space, named after the input, atomically, skipping finished inputs.

    It writes, in ``output_dir`` (no per-case sub-folder):

    - ``nifti``: ``<stem>_<postfix>.nii.gz`` with MONAI's ``NibabelWriter``: the input's shape and affine
      (``original_affine`` / ``spatial_shape`` of the metadata, RAS for DICOM inputs). A prediction that is not on
      that grid (no ``Invertd``) is resampled onto it with nearest-neighbour interpolation, with a warning.
    - ``png``: ``<stem>_<postfix>.png`` with MONAI's ``PILWriter`` (same width/height as the input image, PIL's
      axis convention handled by MONAI's reader/writer pair); binary masks as 0/255, label maps as label values.
    - ``dicom_seg``: the NIfTI, and for DICOM series inputs also ``<folder>_<postfix>.dcm``, a BINARY DICOM SEG
      referencing the source slices (:func:`~monai_unet2.data.dicom_seg.build_dicom_seg`; needs highdicom).

    Every file is written to a hidden temporary name and renamed (:func:`~monai_unet2.data.files.write_atomically`);
    failures raise :class:`~monai_unet2.data.files.OutputWriteError` naming the file.

    Args:
        output_dir: output folder, created when needed.
        output_postfix: appended to the input's name after an underscore.
        output_format: ``"nifti"``, ``"dicom_seg"`` or ``"png"``.
        output_dtype: integer dtype of the NIfTI / PNG data (uint8 default; label values must fit).
        resume: skip inputs whose outputs all exist already (see also :func:`pending_inputs`, which skips them
            before inference).
        label_names: label value -> name (a bundle's ``channel_def`` works), used for the SEG's segment labels and
            to decide PNG binary-ness (one foreground name).
        binary: PNG only: write 0/255; ``None`` decides from ``label_names``, else from the values (max <= 1).
        seg_description: segment codes, colours and descriptions, series description and algorithm of the DICOM SEG
            (a bundle's: :meth:`~monai_unet2.data.SegDescription.from_metadata`); ``None``: package defaults.
        fsync: flush each file to disk before renaming it.

    Raises:
        ValueError: an unknown format or a non-integer dtype.
        ImportError: ``dicom_seg`` without highdicom (at construction, before any inference).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike = "./",
        output_postfix: str = "seg",
        output_format: str = "nifti",
        output_dtype: DtypeLike = np.uint8,
        resume: bool = False,
        label_names: Mapping[Any, str] | Sequence[str] | None = None,
        binary: bool | None = None,
        seg_description: SegDescription | None = None,
        fsync: bool = True,
    ) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
        if not np.issubdtype(np.dtype(output_dtype), np.integer):
            raise ValueError(f"output_dtype must be an integer type for label maps, got {output_dtype}")
        if output_format == "dicom_seg" and not highdicom_available():
            raise ImportError(HIGHDICOM_MISSING)  # fail before inference, not after it
        self.output_dir = os.fspath(output_dir)
        self.output_postfix = output_postfix
        self.output_format = output_format
        self.output_dtype = np.dtype(output_dtype)
        self.resume = resume
        self.label_names = label_names
        self.binary = binary
        self.seg_description = seg_description
        self.fsync = fsync

    def write(self, label_map: torch.Tensor | np.ndarray, meta: Mapping | None) -> list[str]:
        """Write the outputs of one label map; returns their paths (also when skipped by ``resume``).

        Args:
            label_map: channel-first (one channel) or channel-less integer label map.
            meta: its metadata: ``filename_or_obj`` names the outputs; ``affine``, ``original_affine`` and
                ``spatial_shape`` place them; ``SeriesInstanceUID`` / ``sop_instance_uids`` pick the SEG's sources.
        """
        if not meta or not meta.get("filename_or_obj"):
            raise ValueError("SaveSegmentationd names outputs after the input: the metadata has no filename_or_obj")
        source = meta["filename_or_obj"]
        source = os.fspath(source[0] if isinstance(source, (list, tuple)) else source)
        paths = output_paths(source, self.output_dir, self.output_postfix, self.output_format)
        if self.resume and all(os.path.isfile(p) for p in paths):
            logger.info("resume: %s already written, skipping", ", ".join(paths))
            return paths
        ensure_output_dir(self.output_dir)
        labels = self._label_values(label_map, meta, source)
        if self.output_format == "png":
            write_atomically(paths[0], lambda tmp: self._png_writer(labels, meta).write(tmp), self.fsync)
            return paths
        writer = self._nifti_writer(labels, meta, source)
        grid_labels, grid_affine = np.asarray(writer.data_obj), np.asarray(writer.affine, dtype=np.float64)
        write_atomically(paths[0], writer.write, self.fsync)
        if len(paths) > 1:
            uids = [u for u in str(meta.get("sop_instance_uids", "") or "").split("\\") if u]
            seg = build_dicom_seg(
                grid_labels,
                grid_affine,
                source,
                label_names=self.label_names,
                series_uid=meta.get("SeriesInstanceUID"),
                preferred_uids=uids,
                description=self.seg_description,
            )
            write_atomically(paths[1], lambda tmp: seg.save_as(tmp), self.fsync)
        return paths

    def _label_values(self, label_map: torch.Tensor | np.ndarray, meta: Mapping, source: str) -> np.ndarray:
        array = label_map.detach().cpu().numpy() if isinstance(label_map, torch.Tensor) else np.asarray(label_map)
        spatial = meta.get(MetaKeys.SPATIAL_SHAPE)
        n_spatial = len(np.atleast_1d(spatial)) if spatial is not None else array.ndim - 1
        if array.ndim == n_spatial + 1:
            if array.shape[0] != 1:
                raise ValueError(
                    f"prediction for {source} has {array.shape[0]} channels (shape {tuple(array.shape)}); "
                    "SaveSegmentationd writes label maps: apply AsDiscreted(argmax=True) first"
                )
            array = array[0]
        if array.size and not np.all(np.isfinite(array)):
            raise ValueError(f"prediction for {source} holds NaN or infinite values")
        if array.size and np.any(array != np.round(array)):
            raise ValueError(
                f"prediction for {source} holds non-integer values (probabilities?); apply AsDiscreted first"
            )
        limits = np.iinfo(self.output_dtype)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise ValueError(
                f"prediction for {source} has labels {array.min()}..{array.max()}, outside {self.output_dtype}"
            )
        return array.astype(self.output_dtype)

    def _nifti_writer(self, labels: np.ndarray, meta: Mapping, source: str) -> NibabelWriter:
        affine = np.asarray(meta.get(MetaKeys.AFFINE, np.eye(4)), dtype=np.float64)
        original = meta.get(MetaKeys.ORIGINAL_AFFINE)
        spatial = meta.get(MetaKeys.SPATIAL_SHAPE)
        target_shape = tuple(int(s) for s in np.atleast_1d(spatial)) if spatial is not None else labels.shape
        resample = original is not None and (
            target_shape != labels.shape or not np.allclose(affine, np.asarray(original, np.float64), atol=1e-4)
        )
        if resample:
            logger.warning(
                "prediction for %s is not on the input's grid (shape %s, input %s): resampling it (nearest); "
                "put Invertd before SaveSegmentationd",
                source,
                labels.shape,
                target_shape,
            )
        writer = NibabelWriter(output_dtype=self.output_dtype)
        writer.set_data_array(labels, channel_dim=None, squeeze_end_dims=False)  # keep a single slice's z axis
        writer.set_metadata(
            {MetaKeys.AFFINE: affine, MetaKeys.ORIGINAL_AFFINE: original, MetaKeys.SPATIAL_SHAPE: spatial},
            resample=resample,
            mode="nearest",
        )
        expected = target_shape if resample else labels.shape
        writer.data_obj = np.rint(np.asarray(writer.data_obj)).astype(self.output_dtype).reshape(expected)
        return writer

    def _is_binary(self, labels: np.ndarray) -> bool:
        if self.binary is not None:
            return self.binary
        if self.label_names is not None:
            names = self.label_names
            keys = [int(k) for k in names] if isinstance(names, Mapping) else list(range(len(names)))
            return len([k for k in keys if k != 0]) == 1
        return not labels.size or labels.max() <= 1

    def _png_writer(self, labels: np.ndarray, meta: Mapping) -> PILWriter:
        if self._is_binary(labels):
            if labels.size and labels.max() > 1:
                raise ValueError(f"binary PNG output but the prediction has labels up to {labels.max()}")
            labels = (labels > 0).astype(self.output_dtype) * 255
        spatial = meta.get(MetaKeys.SPATIAL_SHAPE)
        squeezed = labels.reshape(labels.shape[:2]) if labels.ndim > 2 and labels[0, 0].size == 1 else labels
        if squeezed.ndim != 2:
            raise ValueError(f"PNG output needs a 2D prediction, got shape {labels.shape}")
        target = tuple(int(s) for s in np.atleast_1d(spatial))[:2] if spatial is not None else squeezed.shape
        writer = PILWriter(output_dtype=self.output_dtype, scale=None)
        writer.set_data_array(squeezed, channel_dim=None, squeeze_end_dims=False)
        writer.data_obj = writer.data_obj.reshape(squeezed.shape)  # MONAI squeezes a 1 x 1 image to nothing
        writer.set_metadata({MetaKeys.SPATIAL_SHAPE: target}, resample=target != squeezed.shape, mode="nearest")
        return writer
