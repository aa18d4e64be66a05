"""Evaluation reports by label name with missed, spurious and absent labels scored by convention; per-channel
normalisation (CT and z-score) and case naming, on a committed sample volume."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from dataset_builders import SAMPLE
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity

from monai_unet2.bundle_config import LabelMetricsReport, case_label_metrics, intensity_normalization
from monai_unet2.transforms import CaseNamed, ChannelNormalize

LABELS = {"0": "background", "1": "anterior", "2": "posterior"}


def one_hot(label: np.ndarray, spacing=(1.0, 1.0, 1.0), name: str = "case.nii.gz") -> MetaTensor:
    channels = np.stack([label == value for value in range(3)]).astype(np.float32)
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.from_numpy(channels), affine=affine, meta={"filename_or_obj": name})


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return np.asarray(nib.load(SAMPLE / "labelsTr" / "hippocampus_004.nii.gz").dataobj).astype(np.uint8)


def test_missed_spurious_and_absent_labels(truth):
    present = torch.from_numpy(truth == 1)
    empty = torch.zeros_like(present)
    diagonal = math.sqrt(sum((size * step) ** 2 for size, step in zip(truth.shape, (1.0, 1.0, 2.0))))
    assert case_label_metrics(empty, present, (1.0, 1.0, 2.0)) == {"dice": 0.0, "hd95": diagonal, "outcome": "missed"}
    assert case_label_metrics(present, empty, (1.0, 1.0, 2.0))["outcome"] == "spurious"
    absent = case_label_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert math.isnan(absent["dice"]) and math.isnan(absent["hd95"]) and absent["outcome"] == "absent"
    same = case_label_metrics(present, present, (1.0, 1.0, 1.0))
    assert same == {"dice": 1.0, "hd95": 0.0, "outcome": "matched"}


def test_report_names_columns_by_label_and_counts_a_missed_label(truth, tmp_path):
    missed_posterior = truth.copy()
    missed_posterior[missed_posterior == 2] = 0
    batches = [
        [{"pred": one_hot(truth, name="/d/a.nii.gz"), "label": one_hot(truth)}],
        [{"pred": one_hot(missed_posterior, name="/d/b.nii.gz"), "label": one_hot(truth)}],
    ]
    report = LabelMetricsReport(LABELS, tmp_path / "report", details={"split": "test"})
    engine = Engine(lambda engine, batch: batch)
    report.attach(engine)
    engine.run(batches, max_epochs=1)
    with open(tmp_path / "report" / "dice_raw.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["filename", "anterior", "posterior", "mean"]
    assert [(row["filename"], row["posterior"]) for row in rows] == [
        ("/d/a.nii.gz", "1.0000"),
        ("/d/b.nii.gz", "0.0000"),
    ]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["labels"]["posterior"]["missed"] == 1 and summary["labels"]["posterior"]["dice"]["mean"] == 0.5
    diagonal = math.sqrt(sum(size**2 for size in truth.shape))
    assert summary["labels"]["posterior"]["hd95_mm"]["mean"] == pytest.approx(diagonal / 2)
    assert summary["split"] == "test" and "missed" in summary["conventions"]
    assert engine.state.metrics["dice_posterior"] == 0.5 and engine.state.metrics["mean_dice"] == 0.75


def test_ct_normalisation_clips_and_scales_each_channel_with_its_own_statistics():
    image = torch.tensor([[[-1000.0, 0.0, 40.0, 3000.0]], [[1.0, 2.0, 3.0, 6.0]]])[..., None]  # (2, 1, 4, 1)
    ct = {"name": "ct", "lower": -100.0, "upper": 200.0, "mean": 50.0, "std": 25.0}
    normalised = ChannelNormalize([ct, {"name": "zscore"}])(image)
    torch.testing.assert_close(normalised[0].flatten(), torch.tensor([-6.0, -2.0, -0.4, 6.0]))
    torch.testing.assert_close(normalised[1], NormalizeIntensity()(image[1:2])[0])
    (planned,) = intensity_normalization(
        "image", {"name": "ct", "lower": [-100.0], "upper": [200.0], "mean": [50.0], "std": [25.0]}
    )
    torch.testing.assert_close(planned({"image": image[:1]})["image"], normalised[:1])
    with pytest.raises(ValueError, match="2 channel\\(s\\), but the normalisation has 1"):
        ChannelNormalize([ct])(image)
    with pytest.raises(ValueError, match=r"normalization .* 'lower' has 2 values for 3 channel"):
        intensity_normalization("image", {"name": "ct", "lower": [0, 1], "upper": [1, 2, 3], "mean": 0, "std": 1})
    with pytest.raises(ValueError, match="channel 1: normalisation 'minmax' is not one of"):
        ChannelNormalize([ct, {"name": "minmax"}])


def test_cases_from_channel_files_are_named_after_the_case():
    image = MetaTensor(torch.zeros(2, 3, 3, 3), meta={"filename_or_obj": "/data/imagesTs/case_7_0000.nii.gz"})
    named = CaseNamed("image")({"image": image, "case": "case_7"})
    assert named["image"].meta["filename_or_obj"] == "/data/imagesTs/case_7.nii.gz"
    assert named["image"].meta["channel_files"] == "/data/imagesTs/case_7_0000.nii.gz"
    single = MetaTensor(torch.zeros(1, 3, 3, 3), meta={"filename_or_obj": "/data/case_8.nii.gz"})
    assert (
        CaseNamed("image")({"image": single, "case": "case_8"})["image"].meta["filename_or_obj"]
        == "/data/case_8.nii.gz"
    )
    assert CaseNamed("image")({"image": single})["image"].meta["filename_or_obj"] == "/data/case_8.nii.gz"
