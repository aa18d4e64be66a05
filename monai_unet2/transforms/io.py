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

import inspect
import os
from collections.abc import Hashable, Mapping, Sequence
from pydoc import locate
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, LoadImaged, MapTransform, SaveImaged
from monai.utils import MetaKeys, ensure_tuple, optional_import
from monai.utils.enums import PostFix

from monai_unet2.data.dicom_checks import DicomSeriesError
from monai_unet2.data.dicom_seg import DicomSegError, seg_to_grid
from monai_unet2.data.images2d import DEFAULT_MAX_PIXELS
from monai_unet2.data.nifti_checks import DEFAULT_QFORM_SFORM_TOLERANCE
from monai_unet2.data.outputs import SegmentationWriter
from monai_unet2.data.reading import header_problem, input_family, pick_reader
from monai_unet2.data.seg_description import SegDescription
from monai_unet2.data.volumes import (
    DEFAULT_MAX_MEMORY_FRACTION,
    DEFAULT_MEMORY_PER_VOXEL,
    VolumeFileError,
    describe_read_error,
    memory_refusal,
)

DEFAULT_POST_FIX = PostFix.meta()

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
    """``monai.transforms.LoadImage`` that reads each input with the reader its content calls for, and refuses in one
    line naming the file whatever it cannot read correctly.

    Before reading: the content decides the reader (:func:`~monai_unet2.data.reading.input_family`: gzip, NIfTI,
    DICOM preamble or folder, PNG/TIFF/JPEG signatures...), so a NIfTI input is never offered to the DICOM reader
    first and a text file named ``.nii.gz`` is refused as a text file; the header is checked
    (:func:`~monai_unet2.data.reading.header_problem`: complex or RGB NIfTI voxels, an affine that is no grid, scaling
    that overflows float32, qform/sform disagreement as a warning; 2D decompression bombs and multi-frame files); and
    a volume too large for memory, after resampling to ``target_spacing`` when given, is refused
    (:func:`~monai_unet2.data.memory_refusal`). Any error while reading becomes a
    :class:`~monai_unet2.data.VolumeFileError` ``"<path>: cannot read image (<cause>: <original error>)"``, chained to
    the original; errors that already name the file (``VolumeFileError``, ``DicomSeriesError``) pass through.

    ``reader`` and ``args`` / ``kwargs`` are ``LoadImage``'s, with one difference: when a reader class or name is
    given, the arguments go to that reader only. ``LoadImage`` also passes them to each of MONAI's default readers,
    which forward unknown keywords to their library (``nibabel.load(path, allow_duplicates=...)``) and then fail on
    every other input. Arguments given with a reader instance are an error (``LoadImage`` ignores them).

    Args:
        reader: reader(s) to register (class, dotted name or instance); the content decides which one reads an input.
        image_only, dtype, ensure_channel_first, simple_keys, prune_meta_pattern, prune_meta_sep, expanduser: those
            of ``LoadImage``.
        args: positional arguments for the given reader.
        memory_per_voxel: bytes the pipeline needs per voxel (default 24).
        max_memory_fraction: largest fraction of the available memory a volume may need; ``None``: no check.
        target_spacing: the spacing (mm) the pipeline resamples to (the ``pixdim`` of its ``Spacingd``), so the
            memory guard judges the resampled size; ``None`` when it does not resample.
        qform_sform_tolerance: warn, naming the file and the distance, when a NIfTI's qform and sform place a voxel
            further apart than this (mm).
        kwargs: keyword arguments for the given reader.
    """

    def __init__(
        self,
        reader: Any = None,
        image_only: bool = True,
        dtype: DtypeLike | None = np.float32,
        ensure_channel_first: bool = False,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        expanduser: bool = True,
        *args: Any,
        memory_per_voxel: float = DEFAULT_MEMORY_PER_VOXEL,
        max_memory_fraction: float | None = DEFAULT_MAX_MEMORY_FRACTION,
        target_spacing: Sequence[float] | float | None = None,
        qform_sform_tolerance: float = DEFAULT_QFORM_SFORM_TOLERANCE,
        **kwargs: Any,
    ) -> None:
        defaults = (
            image_only,
            dtype,
            ensure_channel_first,
            simple_keys,
            prune_meta_pattern,
            prune_meta_sep,
            expanduser,
        )
        if reader is None:
            super().__init__(None, *defaults, *args, **kwargs)
        else:
            super().__init__(None, *defaults)
        for given in ensure_tuple(reader) if reader is not None else ():
            if isinstance(given, str):
                found, builtin = optional_import("monai.data", name=given)
                given = found if builtin else locate(given)
                if given is None:
                    raise ValueError(f"SafeLoadImage: unknown reader {reader!r}")
            if inspect.isclass(given):
                given = given(*args, **kwargs)
            elif args or kwargs:
                raise ValueError(
                    f"SafeLoadImage: reader arguments {list(kwargs) or list(args)} given with a reader instance "
                    f"({type(given).__name__}) would be ignored: pass them to the reader itself"
                )
            self.register(given)
        self.memory_per_voxel = memory_per_voxel
        self.max_memory_fraction = max_memory_fraction
        self.target_spacing = target_spacing
        self.qform_sform_tolerance = qform_sform_tolerance

    def __call__(self, filename: Any, reader: Any = None) -> Any:
        family = input_family(filename)
        chosen = reader if reader is not None else pick_reader(self.readers, family, filename)
        refusal = memory_refusal(filename, self.memory_per_voxel, self.max_memory_fraction, self.target_spacing)
        if refusal is None:
            max_pixels = getattr(chosen, "max_pixels", DEFAULT_MAX_PIXELS)
            refusal = header_problem(filename, family, max_pixels, self.qform_sform_tolerance)
        if refusal is not None:
            raise VolumeFileError(refusal)
        try:
            return super().__call__(filename, chosen)
        except (VolumeFileError, DicomSeriesError):
            raise
        except Exception as error:
            raise VolumeFileError(describe_read_error(filename, error)) from error


class SafeLoadImaged(LoadImaged):
    """``monai.transforms.LoadImaged`` with :class:`SafeLoadImage` as its loader: each input read by the reader its
    content calls for, and refused in one line naming the file when it cannot be read correctly.

    A subclass (not a wrapper) so code that looks for ``LoadImaged`` in a pipeline with ``isinstance`` (MONAI
    Label's bundle inference task) still recognises it.

    Args:
        keys: keys of the file names to load.
        reader: as for :class:`SafeLoadImage`: its keyword arguments (``kwargs``) go to this reader only, e.g.
            ``allow_duplicates`` or ``series_uid`` for ``DicomSeriesReader``, ``channels`` for ``Image2DReader``.
        dtype, meta_keys, meta_key_postfix, overwriting, image_only, ensure_channel_first, simple_keys,
            prune_meta_pattern, prune_meta_sep, allow_missing_keys, expanduser: those of ``LoadImaged``.
        args: positional arguments for the given reader.
        memory_per_voxel: bytes the pipeline needs per voxel; with ``max_memory_fraction`` it decides which
            volumes are refused before reading (see :class:`SafeLoadImage`).
        max_memory_fraction: largest fraction of the available memory a volume may need; ``None``: no check.
        target_spacing: the ``pixdim`` of the pipeline's ``Spacingd``, so that the memory guard judges the size after
            resampling.
        qform_sform_tolerance: see :class:`SafeLoadImage`.
        kwargs: keyword arguments for the given reader.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: Any = None,
        dtype: DtypeLike | None = np.float32,
        meta_keys: KeysCollection | None = None,
        meta_key_postfix: str = DEFAULT_POST_FIX,
        overwriting: bool = False,
        image_only: bool = True,
        ensure_channel_first: bool = False,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        allow_missing_keys: bool = False,
        expanduser: bool = True,
        *args: Any,
        memory_per_voxel: float = DEFAULT_MEMORY_PER_VOXEL,
        max_memory_fraction: float | None = DEFAULT_MAX_MEMORY_FRACTION,
        target_spacing: Sequence[float] | float | None = None,
        qform_sform_tolerance: float = DEFAULT_QFORM_SFORM_TOLERANCE,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            keys,
            None,
            dtype,
            meta_keys,
            meta_key_postfix,
            overwriting,
            image_only,
            ensure_channel_first,
            simple_keys,
            prune_meta_pattern,
            prune_meta_sep,
            allow_missing_keys,
            expanduser,
        )
        self._loader = SafeLoadImage(
            reader,
            image_only,
            dtype,
            ensure_channel_first,
            simple_keys,
            prune_meta_pattern,
            prune_meta_sep,
            expanduser,
            *args,
            memory_per_voxel=memory_per_voxel,
            max_memory_fraction=max_memory_fraction,
            target_spacing=target_spacing,
            qform_sform_tolerance=qform_sform_tolerance,
            **kwargs,
        )


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
