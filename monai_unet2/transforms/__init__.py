"""monai_unet2.transforms: DICOM series / SEG loading, 2.5D slice sampling and signed distance maps."""

from .checks import (
    CheckVolumeD,
    CheckVolumed,
    CheckVolumeDict,
    SafeLoadImage,
    SafeLoadImageD,
    SafeLoadImaged,
    SafeLoadImageDict,
    VolumeFileError,
    describe_read_error,
    grid_distance_mm,
)
from .dicom_checks import DicomSeriesError
from .dicom_reader import DicomSeries, DicomSeriesReader, decoder_available
from .dicom_seg import DicomSegError, LoadDicomSegD, LoadDicomSegd, LoadDicomSegDict, seg_to_grid
from .distance import SignedDistanceMapd, signed_distance_map
from .memory import available_memory, header_voxel_count, memory_refusal
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
