"""Models-from-code entry point that MLflow stores with every registered version (``python_model=<this file>``).

MLflow executes this file when the model is loaded; it only names the model class, so nothing is pickled.
"""

import mlflow

from monai_unet2.tracking.serving import BundleSegmentationModel

mlflow.models.set_model(BundleSegmentationModel())
