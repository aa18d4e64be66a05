"""monai_unet2.transforms: dictionary (and array) transforms: safe loading and checks, the modality guard, DICOM SEG
loading, per-channel intensity normalisation, case naming, 2.5D slice sampling, signed distance maps and saving.
The readers and writers behind them are in :mod:`monai_unet2.data`."""

from .checks import CheckVolumeD, CheckVolumed, CheckVolumeDict, grid_distance_mm
from .distance import SignedDistanceMapd, signed_distance_map
from .guards import CheckModalityD, CheckModalityd, CheckModalityDict
from .intensity import ChannelNormalize, ChannelNormalizeD, ChannelNormalized, ChannelNormalizeDict
from .io import (
    LoadDicomSegD,
    LoadDicomSegd,
    LoadDicomSegDict,
    SafeLoadImage,
    SafeLoadImageD,
    SafeLoadImaged,
    SafeLoadImageDict,
    SaveSegmentationD,
    SaveSegmentationd,
    SaveSegmentationDict,
)
from .naming import CaseNameD, CaseNamed, CaseNameDict
from .slices import (
    RandSliceWithContextD,
    RandSliceWithContextd,
    RandSliceWithContextDict,
    SliceWithContextD,
    SliceWithContextd,
    SliceWithContextDict,
    slice_affine,
    stack_slice_context,
)

__all__ = [
    "CaseNameD",
    "CaseNameDict",
    "CaseNamed",
    "ChannelNormalize",
    "ChannelNormalizeD",
    "ChannelNormalizeDict",
    "ChannelNormalized",
    "CheckModalityD",
    "CheckModalityDict",
    "CheckModalityd",
    "CheckVolumeD",
    "CheckVolumeDict",
    "CheckVolumed",
    "LoadDicomSegD",
    "LoadDicomSegDict",
    "LoadDicomSegd",
    "RandSliceWithContextD",
    "RandSliceWithContextDict",
    "RandSliceWithContextd",
    "SafeLoadImage",
    "SafeLoadImageD",
    "SafeLoadImageDict",
    "SafeLoadImaged",
    "SaveSegmentationD",
    "SaveSegmentationDict",
    "SaveSegmentationd",
    "SignedDistanceMapd",
    "SliceWithContextD",
    "SliceWithContextDict",
    "SliceWithContextd",
    "grid_distance_mm",
    "signed_distance_map",
    "slice_affine",
    "stack_slice_context",
]
