"""Dictionary (and array) transforms that load and save: safe volume loading, DICOM SEG loading, segmentation
saving. Thin wrappers: the formats live in :mod:`monai_unet2.data`.

- :class:`SafeLoadImage` / :class:`SafeLoadImaged`: MONAI's loaders whose read failures name the file
  (:func:`~monai_unet2.data.describe_read_error`) and which refuse a volume too large for memory before reading it
  (:func:`~monai_unet2.data.memory_refusal`).
- :class:`LoadDicomSegd`: a DICOM SEG onto the grid of an already loaded image
  (:func:`~monai_unet2.data.seg_to_grid`).
- :class:`SaveSegmentationd`: label maps written atomically, named after the input, in NIfTI, PNG or DICOM SEG
  (:class:`~monai_unet2.data.outputs.SegmentationWriter`).

``SafeLoadImaged`` subclasses ``LoadImaged`` and ``SaveSegmentationd`` subclasses ``SaveImaged``: MONAI Label's bundle
task finds loaders and drops savers in a bundle's pipeline with ``isinstance``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, LoadImaged, MapTransform, SaveImaged
from monai.utils import MetaKeys

from monai_unet2.data.dicom_checks import DicomSeriesError
from monai_unet2.data.dicom_seg import DicomSegError, seg_to_grid
from monai_unet2.data.outputs import SegmentationWriter
from monai_unet2.data.seg_description import SegDescription
from monai_unet2.data.volumes import (
    DEFAULT_MAX_MEMORY_FRACTION,
    DEFAULT_MEMORY_PER_VOXEL,
    VolumeFileError,
    describe_read_error,
    memory_refusal,
)

__all__ = [
    "LoadDicomSegD",
    "LoadDicomSegDict",
    "LoadDicomSegd",
    "SafeLoadImage",
    "SafeLoadImageD",
    "SafeLoadImageDict",
    "SafeLoadImaged",
    "SaveSegmentationD",
    "SaveSegmentationDict",
    "SaveSegmentationd",
]


class SafeLoadImage(LoadImage):
    """``monai.transforms.LoadImage`` whose read failures name the file: any error while reading becomes a
    :class:`~monai_unet2.data.VolumeFileError` ``"<path>: cannot read image (<cause>: <original error>)"``, chained to the original.

    Errors that already name the file (:class:`VolumeFileError`,
    :class:`~monai_unet2.data.DicomSeriesError`) pass through unchanged. Before reading, a
    volume whose header promises more voxels than memory allows is refused
    (:func:`~monai_unet2.data.memory_refusal`), so a huge file gives a message instead of a SIGKILL
    from the OOM killer.

    Args:
        args: those of ``LoadImage``.
        memory_per_voxel: bytes the pipeline needs per input voxel (default 24).
        max_memory_fraction: largest fraction of the available memory a volume may need; ``None``: no check.
        kwargs: those of ``LoadImage``.
    """

    def __init__(
        self,
        *args: Any,
        memory_per_voxel: float = DEFAULT_MEMORY_PER_VOXEL,
        max_memory_fraction: float | None = DEFAULT_MAX_MEMORY_FRACTION,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.memory_per_voxel = memory_per_voxel
        self.max_memory_fraction = max_memory_fraction

    def __call__(self, filename: Any, reader: Any = None) -> Any:
        refusal = memory_refusal(filename, self.memory_per_voxel, self.max_memory_fraction)
        if refusal is not None:
            raise VolumeFileError(refusal)
        try:
            return super().__call__(filename, reader)
        except (VolumeFileError, DicomSeriesError):
            raise
        except Exception as error:
            raise VolumeFileError(describe_read_error(filename, error)) from error


class SafeLoadImaged(LoadImaged):
    """``monai.transforms.LoadImaged`` with :class:`SafeLoadImage` as its loader: a truncated or corrupt file gives a
    :class:`~monai_unet2.data.VolumeFileError` naming the file instead of a bare ``EOFError`` from gzip.

    A subclass (not a wrapper) so code that looks for ``LoadImaged`` in a pipeline with ``isinstance`` (MONAI
    Label's bundle inference task) still recognises it. The loader ``LoadImaged`` built is re-classed by copying its
    state, so its registered readers are reused rather than constructed twice.

    Args:
        keys: keys of the file names to load.
        args: those of ``LoadImaged``.
        memory_per_voxel: bytes the pipeline needs per input voxel; with ``max_memory_fraction`` it decides which
            volumes are refused before reading (see :class:`SafeLoadImage`).
        max_memory_fraction: largest fraction of the available memory a volume may need; ``None``: no check.
        kwargs: those of ``LoadImaged``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        *args: Any,
        memory_per_voxel: float = DEFAULT_MEMORY_PER_VOXEL,
        max_memory_fraction: float | None = DEFAULT_MAX_MEMORY_FRACTION,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, *args, **kwargs)
        safe_loader = SafeLoadImage.__new__(SafeLoadImage)
        safe_loader.__dict__.update(self._loader.__dict__)
        safe_loader.memory_per_voxel = memory_per_voxel
        safe_loader.max_memory_fraction = max_memory_fraction
        self._loader = safe_loader


class LoadDicomSegd(MapTransform):
    """Load DICOM SEG files onto the grid of an already loaded reference image (e.g. the CT series they annotate).

    Place it right after ``LoadImaged``/``EnsureChannelFirstd`` of the reference key, before any resampling.
    Each key's value (a SEG path) is replaced by a MetaTensor on the reference grid with the reference's affine:
    ``(n_segments, X, Y, Z)`` uint8 (one channel per segment, overlaps kept) or, with ``labelmap=True``,
    ``(1, X, Y, Z)`` holding the SegmentNumber of each voxel (overlapping segments are then an error). The meta dict
    gets ``segment_labels`` (backslash-joined, in channel order, so that it collates like any string).

    Args:
        keys: keys holding SEG file paths.
        ref_key: key of the reference image (MetaTensor with an affine; channel-first or not).
        labelmap: return one label-map channel instead of one channel per segment.
        grid_tolerance: see :func:`seg_to_grid`.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        labelmap: bool = False,
        grid_tolerance: float = 0.1,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.labelmap = labelmap
        self.grid_tolerance = grid_tolerance

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference = d[self.ref_key]
        if not isinstance(reference, MetaTensor):
            raise TypeError(f"LoadDicomSegd needs the reference {self.ref_key!r} as a MetaTensor with an affine")
        for key in self.key_iterator(d):
            path = f"{d[key]}"
            channels, segments = seg_to_grid(
                path, reference.affine, reference.shape[-3:], grid_tolerance=self.grid_tolerance
            )
            if self.labelmap:
                overlap = int((channels.sum(axis=0) > 1).sum())
                if overlap:
                    raise DicomSegError(
                        f"DICOM SEG {path}: {overlap} voxels belong to several segments; use labelmap=False"
                    )
                numbers = np.asarray([s["number"] for s in segments], dtype=np.int16).reshape(-1, 1, 1, 1)
                channels = (channels * numbers).sum(axis=0, keepdims=True).astype(np.int16)
            meta = {"filename_or_obj": path, "segment_labels": "\\".join(s["label"] for s in segments)}
            d[key] = MetaTensor(torch.as_tensor(channels), affine=reference.affine.clone(), meta=meta)
        return d


class SaveSegmentationd(SaveImaged):
    """Save label maps in the input's space, named after the input, atomically, skipping finished inputs.

    Place it last in an inference ``postprocessing``, after ``Invertd`` has brought the prediction back into the
    input's space. The writing (formats ``nifti``, ``png`` and ``dicom_seg``, naming, atomic files, resume) is
    :class:`~monai_unet2.data.outputs.SegmentationWriter`'s: outputs go to ``output_dir`` as
    ``<stem>_<postfix>.nii.gz`` / ``.png``, plus ``<folder>_<postfix>.dcm`` (a DICOM SEG) for DICOM series inputs
    with ``dicom_seg``. Failures raise :class:`~monai_unet2.data.OutputWriteError` naming the file. It subclasses
    ``SaveImaged`` so that MONAI Label's bundle task, which filters ``SaveImaged`` instances out of
    ``postprocessing``, drops it when serving.

    Args:
        keys: keys of the label maps (channel-first, one channel, integer values: after ``AsDiscreted(argmax)``).
        output_dir: output folder, created when needed.
        output_postfix: appended to the input's name after an underscore.
        output_format: ``"nifti"``, ``"dicom_seg"`` or ``"png"``.
        output_dtype: integer dtype of the NIfTI / PNG data (uint8 default; label values must fit).
        resume: skip inputs whose outputs all exist already (see also :func:`~monai_unet2.data.pending_inputs`,
            which skips them before inference).
        label_names: label value -> name (a bundle's ``channel_def`` works), used for the SEG's segment labels and
            to decide PNG binary-ness (one foreground name).
        binary: PNG only: write 0/255; ``None`` decides from ``label_names``, else from the values (max <= 1).
        meta_keys: metadata dict keys for non-MetaTensor values (default ``{key}_{meta_key_postfix}``).
        meta_key_postfix: see ``meta_keys``.
        seg_description: segment codes, colours and descriptions, series description and algorithm of the DICOM SEG
            (``"$monai_unet2.tracking.seg_description(@bundle_root, @ckpt_path, @tracking_uri)"`` in a bundle);
            ``None``: package defaults.
        fsync: flush each file to disk before renaming it.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str | os.PathLike = "./",
        output_postfix: str = "seg",
        output_format: str = "nifti",
        output_dtype: DtypeLike = np.uint8,
        resume: bool = False,
        label_names: Mapping[Any, str] | Sequence[str] | None = None,
        binary: bool | None = None,
        meta_keys: KeysCollection | None = None,
        meta_key_postfix: str = "meta_dict",
        seg_description: SegDescription | None = None,
        fsync: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        self.writer = SegmentationWriter(
            output_dir,
            output_postfix,
            output_format,
            output_dtype,
            resume,
            label_names,
            binary,
            seg_description,
            fsync,
        )
        super().__init__(
            keys,
            meta_keys=meta_keys,
            meta_key_postfix=meta_key_postfix,
            output_dir=output_dir,
            output_postfix=output_postfix,
            output_ext=".png" if output_format == "png" else ".nii.gz",
            output_dtype=output_dtype,
            separate_folder=False,
            print_log=False,
            allow_missing_keys=allow_missing_keys,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, meta_key, meta_key_postfix in self.key_iterator(d, self.meta_keys, self.meta_key_postfix):
            value = d[key]
            meta = value.meta if isinstance(value, MetaTensor) else d.get(meta_key or f"{key}_{meta_key_postfix}")
            written = self.save(value, meta)
            if isinstance(value, MetaTensor):
                value.meta[MetaKeys.SAVED_TO] = written[0]
        return d

    def save(self, label_map: torch.Tensor | np.ndarray, meta: Mapping | None) -> list[str]:
        """Write the outputs of one label map; returns their paths (also when skipped by ``resume``).

        Args:
            label_map: channel-first (one channel) or channel-less integer label map.
            meta: its metadata (``filename_or_obj`` names the outputs).
        """
        return self.writer.write(label_map, meta)


SafeLoadImageD = SafeLoadImageDict = SafeLoadImaged
LoadDicomSegD = LoadDicomSegDict = LoadDicomSegd
SaveSegmentationD = SaveSegmentationDict = SaveSegmentationd
