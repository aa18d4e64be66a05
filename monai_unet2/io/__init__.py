"""monai_unet2.io: datalists and writers around the bundles' inputs and outputs."""

from .datalist import DatalistError, inference_datalist, is_dicom_file, msd_datalist, resolve_inside, split_cases
from .dicom_seg_writer import DicomSegWriteError, build_dicom_seg, highdicom_available
from .image_folders import IMAGE_SUFFIXES, image_files, image_folder_datalist, paired_datalist
from .writers import (
    OutputWriteError,
    SaveSegmentationD,
    SaveSegmentationd,
    SaveSegmentationDict,
    ensure_output_dir,
    output_paths,
    pending_inputs,
    write_atomically,
)
