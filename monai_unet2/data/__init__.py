"""monai_unet2.data: formats (a reader and a writer of one format together, sharing their geometry), datalists and
files.

- DICOM series: :class:`DicomSeriesReader` (``dicom_series``; a file's frames in ``dicom_headers``, series checks in
  ``dicom_checks``); single-frame slices and enhanced multi-frame images.
- DICOM SEG: :func:`seg_to_grid` and :func:`build_dicom_seg` (``dicom_seg``), over the frame geometry shared with
  the series reader (``dicom_geometry``); what a SEG says about its segments and its maker, from a bundle's
  metadata: :class:`SegDescription` (``seg_description``).
- Reading by content: what a file really is (``file_kinds``), the reader for it and the header checks before any
  voxel is read (``reading``; NIfTI in ``nifti_checks``, 2D images in ``images2d``), affines (``affines``).
- Volume files: named read errors and the memory guard (``volumes``); whether an input is the modality a model
  expects (``modality``).
- Segmentation outputs: naming, resume and per-format writing (``outputs``).
- Datasets: nnU-Net v2 and Decathlon layouts and their ``dataset.json`` (``datasets``, ``dataset_json``),
  cross-validation folds (``splits``).
- Datalists: training folds, the fixed split, folders to segment (``datalist``) and 2D image folders
  (``image_folders``).
- Files: atomic writes, output folders, the DICOM folder scanner (``files``).

The dictionary transforms that use them are in :mod:`monai_unet2.transforms`.
"""

from .datalist import fold_datalist, inference_datalist, msd_datalist, pending_cases, split_cases
from .dataset_json import DatalistError, DatasetManifest, read_manifest
from .datasets import DatasetDescription, read_dataset, resolve_inside
from .dicom_checks import DicomSeriesError
from .dicom_seg import DicomSegError, build_dicom_seg, highdicom_available, seg_to_grid
from .dicom_series import DicomSeries, DicomSeriesReader, decoder_available
from .file_kinds import FileKind, sniff
from .files import OutputWriteError, dicom_files, ensure_output_dir, write_atomically
from .image_folders import IMAGE_SUFFIXES, image_files, image_folder_datalist, paired_datalist
from .images2d import Image2DReader
from .modality import ExpectedInput, ModalityMismatchError
from .outputs import SegmentationWriter, output_paths, pending_inputs
from .seg_description import SegDescription, SegmentCoding
from .splits import fold_cases, make_splits, read_splits
from .volumes import (
    VolumeFileError,
    available_memory,
    describe_read_error,
    header_geometry,
    header_voxel_count,
    memory_refusal,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "DatalistError",
    "DatasetDescription",
    "DatasetManifest",
    "DicomSegError",
    "DicomSeries",
    "DicomSeriesError",
    "DicomSeriesReader",
    "ExpectedInput",
    "FileKind",
    "Image2DReader",
    "ModalityMismatchError",
    "OutputWriteError",
    "SegDescription",
    "SegmentCoding",
    "SegmentationWriter",
    "VolumeFileError",
    "available_memory",
    "build_dicom_seg",
    "decoder_available",
    "describe_read_error",
    "dicom_files",
    "ensure_output_dir",
    "fold_cases",
    "fold_datalist",
    "header_geometry",
    "header_voxel_count",
    "highdicom_available",
    "image_files",
    "image_folder_datalist",
    "inference_datalist",
    "make_splits",
    "memory_refusal",
    "msd_datalist",
    "output_paths",
    "paired_datalist",
    "pending_cases",
    "pending_inputs",
    "read_dataset",
    "read_manifest",
    "read_splits",
    "resolve_inside",
    "seg_to_grid",
    "sniff",
    "split_cases",
    "write_atomically",
]
