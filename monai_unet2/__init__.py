"""monai_unet2: a MONAI plugin for medical image segmentation.

Sub-packages follow the pipeline: ``networks`` (UNet, U2Net), ``transforms`` (DICOM / NIfTI loading, 2.5D slice
sampling, signed distance maps), ``losses`` (Dice + CE + boundary), ``inferers`` (2D / 2.5D sliding window over 3D
volumes) and ``tracking`` (MLflow).
"""

__version__ = "0.1.0"
