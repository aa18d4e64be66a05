"""DRIVE's accuracy and AUC count the pixels inside the field of view only (``monai_unet2.handlers.fov_pixels``)."""

from __future__ import annotations

import torch
from monai.metrics import ConfusionMatrixMetric, ROCAUCMetric

from monai_unet2.handlers import fov_pixels


def engine_output() -> list[dict]:
    """Two 1×4×4 images: inside the FOV (left half) 6 of 8 thresholded pixels are right and the probabilities
    separate the classes perfectly; outside it every pixel is background with probability 0.9."""
    outputs = []
    for _ in range(2):
        fov = torch.zeros(1, 4, 4)
        fov[:, :, :2] = 1
        label = torch.zeros(1, 4, 4)
        label[0, :2, :2] = 1
        prob = torch.full((1, 4, 4), 0.9)
        prob[0, :, :2] = torch.tensor([[0.8, 0.7], [0.6, 0.55], [0.4, 0.3], [0.2, 0.1]])
        pred = (prob > 0.5).float() * fov
        pred[0, 0, 0] = 0.0  # two mistakes inside the FOV
        pred[0, 3, 1] = 1.0
        outputs.append({"prob": prob, "pred": pred, "label": label * fov, "fov": fov})
    return outputs


def test_accuracy_and_auc_count_only_the_pixels_inside_the_field_of_view():
    outputs = engine_output()
    accuracy = ConfusionMatrixMetric(metric_name="accuracy", include_background=True, compute_sample=True)
    auc = ROCAUCMetric()
    for output in outputs:  # one image per iteration, as the validation loader gives them
        accuracy(*fov_pixels("pred")([output]))
        auc(*fov_pixels("prob", per_pixel=True)([output]))
    assert float(accuracy.aggregate()[0]) == 0.75  # 6 of 8; all 16 pixels would give 0.875
    assert auc.aggregate() == 1.0  # the outside pixels (0.9, background) would lower it
    pred, label = fov_pixels("prob", per_pixel=True)(outputs)
    assert pred.shape == label.shape == (16, 1)  # a batch pools its images' FOV pixels
