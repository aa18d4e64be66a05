"""monai_unet2.io: datalists and writers around the bundles' inputs and outputs."""

from .datalist import DatalistError, inference_datalist, is_dicom_file, msd_datalist, resolve_inside, split_cases
