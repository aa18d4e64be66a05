"""DiceCEBoundaryLoss (equal to its first version, DiceBCEBoundaryLoss), deep supervision through MONAI's
DeepSupervisionLoss, and the boundary-weight schedule (MONAI's ParamSchedulerHandler with boundary_weight_setter)."""

from __future__ import annotations

import glob
import itertools
import json
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import ParamSchedulerHandler
from monai.losses import BoundaryLoss, DeepSupervisionLoss, DiceCELoss
from monai.metrics import DiceMetric
from monai.networks import one_hot
from monai.networks.nets import BasicUNet
from monai.transforms import Compose, ConcatItemsd

from monai_unet2.losses import BoundaryWeightMetric, DiceCEBoundaryLoss, boundary_weight_setter
from monai_unet2.transforms.distance import SignedDistanceMapd, signed_distance_map

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "bundles", "hippocampus_unet25d_segmentation", "sample_data")
LABELS = sorted(glob.glob(os.path.join(SAMPLE, "labelsTr", "*.nii.gz")))
BUNDLES = Path(REPO) / "bundles"
DRIVE = Path(REPO).parent / "shared" / "data" / "drive" / "training"


def _load(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _real_slices(files: list[str], size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Coronal slices (axis 1) with foreground, z-scored per volume, zero-padded to size x size."""
    images, labels = [], []
    for label_path in files:
        label = _load(label_path).astype(np.int64)
        image = _load(label_path.replace("labelsTr", "imagesTr")).astype(np.float32)
        image = (image - image.mean()) / image.std()
        for index in range(label.shape[1]):
            if label[:, index].any():
                padded_image = np.zeros((size, size), np.float32)
                padded_label = np.zeros((size, size), np.int64)
                padded_image[: label.shape[0], : label.shape[2]] = image[:, index]
                padded_label[: label.shape[0], : label.shape[2]] = label[:, index]
                images.append(padded_image)
                labels.append(padded_label)
    return torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(labels))[:, None]


def _target(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label channel followed by the distance maps, as SignedDistanceMapd + ConcatItemsd build it."""
    maps = [SignedDistanceMapd(num_classes=num_classes)({"label": sample})["distance_map"] for sample in label]
    return torch.cat([label.float(), torch.stack(maps)], dim=1)


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _logits_from_mask(mask: np.ndarray) -> torch.Tensor:
    """Single-channel logits (+-8) of a binary prediction, shape (1, 1, H, W)."""
    return torch.from_numpy(np.where(mask, 8.0, -8.0).astype(np.float32))[None, None]


def _boundary_only(input: torch.Tensor, target: torch.Tensor, **kwargs) -> float:
    loss = DiceCEBoundaryLoss(lambda_dice=0.0, lambda_ce=0.0, lambda_boundary=1.0, **kwargs)
    return float(loss(input, target))


def test_false_positive_cost_grows_with_distance_from_boundary():
    truth = _disc((128, 128), (64, 40), 15)
    phi = torch.from_numpy(signed_distance_map(truth))[None, None]
    target = torch.cat([torch.from_numpy(truth.astype(np.float32))[None, None], phi], dim=1)
    costs = []
    for gap in (5, 15, 35):
        blob = _disc((128, 128), (64, 40 + 15 + gap + 4), 3)
        assert not (blob & truth).any()
        costs.append(_boundary_only(_logits_from_mask(truth | blob), target, sigmoid=True))
    perfect = _boundary_only(_logits_from_mask(truth), target, sigmoid=True)
    print("boundary term, perfect / FP at 5, 15, 35 px:", perfect, costs)
    assert perfect < costs[0] < costs[1] < costs[2]
    # the blob costs its (area-weighted) distance: 35 px away costs > 4x what 5 px away costs
    assert costs[2] - perfect > 4 * (costs[0] - perfect)


def test_shifted_prediction_cost_grows_with_shift_on_real_mask():
    label = _load(LABELS[0])
    slice_index = int(np.argmax((label > 0).sum(axis=(0, 2))))
    truth = np.zeros((112, 112), bool)
    truth[40 : 40 + label.shape[0], 30 : 30 + label.shape[2]] = label[:, slice_index] > 0
    phi = torch.from_numpy(signed_distance_map(truth))[None, None]
    target = torch.cat([torch.from_numpy(truth.astype(np.float32))[None, None], phi], dim=1)
    shifts = (0, 1, 3, 6, 12, 24)
    costs = [_boundary_only(_logits_from_mask(np.roll(truth, s, axis=1)), target, sigmoid=True) for s in shifts]
    print("boundary term for shifts 0, 1, 3, 6, 12, 24 px:", costs)
    assert all(a < b for a, b in itertools.pairwise(costs))


def test_matches_monai_dicece_and_boundary_loss_on_real_slices():
    _, labels = _real_slices(LABELS[:1])
    label = labels[:4]
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 48, 48)
    target = _target(label, 3)
    region = DiceCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_boundary=0.0)(logits, target)
    reference_region = DiceCELoss(softmax=True, to_onehot_y=True)(logits, label)
    assert torch.allclose(region, reference_region, atol=1e-5)
    class_weights = [0.2, 1.0, 3.0]
    weighted = DiceCEBoundaryLoss(
        softmax=True, to_onehot_y=True, lambda_dice=0.0, lambda_boundary=0.0, ce_weight=class_weights
    )
    expected = torch.nn.functional.cross_entropy(logits, label[:, 0].long(), weight=torch.tensor(class_weights))
    assert torch.allclose(weighted(logits, target), expected, atol=1e-6)
    ours = _boundary_only(logits, target, softmax=True, to_onehot_y=True)
    reference = BoundaryLoss(softmax=True, to_onehot_y=True, include_background=False)(logits, label)
    assert ours == pytest.approx(float(reference), rel=1e-5, abs=1e-6)


def test_on_the_fly_maps_equal_precomputed_and_warn_once():
    _, label = _real_slices(LABELS[1:2])
    label = label[:3]
    logits = torch.randn(3, 3, 48, 48)
    loss = DiceCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_boundary=0.5)
    precomputed = loss(logits, _target(label, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = loss(logits, label.float())
        second = loss(logits, label.float())
    assert [str(w.message) for w in caught if "distance maps" in str(w.message)].__len__() == 1
    assert torch.allclose(first, precomputed, atol=1e-5) and torch.allclose(second, precomputed, atol=1e-5)


def test_gradients_reach_logits_and_batch_is_mean_of_samples():
    _, label = _real_slices(LABELS[2:3])
    target = _target(label[:2], 3)
    logits = torch.randn(2, 3, 48, 48, requires_grad=True)
    loss = DiceCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_dice=0.0, lambda_ce=0.0, lambda_boundary=1.0)
    loss(logits, target).backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    full = DiceCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_boundary=0.3)
    both = full(logits, target).detach()
    each = [full(logits[i : i + 1], target[i : i + 1]).detach() for i in range(2)]
    assert float(both) == pytest.approx(float(sum(each)) / 2, rel=1e-5)


def test_cpu_autocast_bfloat16_is_finite_and_close_to_float32(single_thread):
    _, label = _real_slices(LABELS[3:4])
    target = _target(label[:2], 3)
    network = BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4))
    image = torch.randn(2, 1, 48, 48)
    loss = DiceCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_boundary=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prediction = network(image)
        value = loss(prediction, target)
    assert prediction.dtype == torch.bfloat16 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
    reference = loss(prediction.detach().float(), target)
    assert float(value) == pytest.approx(float(reference), rel=1e-5)


def test_3d_sigmoid_binary_and_wrong_map_count():
    label = _load(LABELS[4])
    mask = torch.from_numpy((label[:32, :32, :32] > 0).astype(np.float32))[None]
    phi = torch.from_numpy(signed_distance_map(mask[0].numpy()))[None]
    target = torch.stack([torch.cat([mask, phi]), torch.cat([mask, phi])])
    logits = torch.randn(2, 1, 32, 32, 32, requires_grad=True)
    loss = DiceCEBoundaryLoss(sigmoid=True, lambda_boundary=1.0)
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and float(logits.grad.abs().sum()) > 0
    expected_boundary = float((torch.sigmoid(logits.detach()) * phi).mean())
    assert float(loss.last_terms["boundary"]) == pytest.approx(expected_boundary, rel=1e-5)
    with pytest.raises(ValueError, match="distance-map channels"):
        loss(logits, torch.cat([target, target[:, 1:]], dim=1))


def test_deep_supervision_list_is_weighted_sum_and_tensor_passes_through():
    _, label = _real_slices(LABELS[5:6])
    target = _target(label[:2], 3)
    outputs = [torch.randn(2, 3, 48, 48) for _ in range(7)]
    loss = DiceCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_boundary=0.2)
    each = [float(loss(output, target)) for output in outputs]
    same = DeepSupervisionLoss(loss, weight_mode="same")
    assert float(same(outputs, target)) == pytest.approx(sum(each), rel=1e-5)
    weights = [0.5**i for i in range(7)]
    halving = DeepSupervisionLoss(loss, weights=weights)
    assert float(halving(outputs, target)) == pytest.approx(sum(w * v for w, v in zip(weights, each)), rel=1e-5)
    assert float(same(outputs[0], target)) == pytest.approx(each[0], rel=1e-6)


def test_equals_first_version_on_hippocampus_slices_with_the_bundle_settings():
    """Values of DiceBCEBoundaryLoss (the first version, before DiceCELoss did the region terms) on 8 real slices."""
    images, labels = _real_slices(LABELS[:1])
    images, labels = images[:8], labels[:8]
    logits = torch.cat([2 * images, 1 - images, images.abs() - 1 + 2 * (labels == 2)], dim=1)
    settings = {"softmax": True, "to_onehot_y": True, "include_background": False, "lambda_dice": 1.0, "lambda_ce": 1.0}
    for alpha, first_version in ((0.01, 2.8522446155548096), (0.1, 2.9162912368774414)):
        value = DiceCEBoundaryLoss(**settings, lambda_boundary=alpha)(logits, _target(labels, 3))
        assert float(value) == pytest.approx(first_version, rel=1e-6, abs=0)


@pytest.mark.skipif(not DRIVE.is_dir(), reason="DRIVE not present at ../shared/data/drive")
def test_equals_first_version_on_drive_vessels_inside_deep_supervision():
    """The DRIVE bundle's loss (sigmoid, one channel, 7 U2Net outputs) on real vessel masks, against the first version."""
    from PIL import Image

    images = sorted((DRIVE / "images").glob("*.tif"))[:2]
    green = [np.asarray(Image.open(path))[200:328, 200:328, 1].astype(np.float32) for path in images]
    green = torch.from_numpy(np.stack(green))[:, None]
    green = (green - green.mean()) / green.std()
    masks = [DRIVE / "1st_manual" / f"{path.name[:2]}_manual1.gif" for path in images]
    vessels = torch.from_numpy(np.stack([np.asarray(Image.open(p))[200:328, 200:328] > 127 for p in masks]))[:, None]
    vessels = vessels.float()
    maps = torch.stack([SignedDistanceMapd()({"label": mask})["distance_map"] for mask in vessels])
    outputs = [-(k + 1) * 0.5 * green - 1 for k in range(7)]  # vessels are dark in the green channel
    for alpha, first_version in ((0.01, 10.76103687286377), (0.1, 12.416096687316895)):
        loss = DiceCEBoundaryLoss(sigmoid=True, lambda_dice=1.0, lambda_ce=1.0, lambda_boundary=alpha)
        value = DeepSupervisionLoss(loss, weight_mode="same")(outputs, torch.cat([vessels, maps], dim=1))
        assert float(value) == pytest.approx(first_version, rel=1e-6, abs=0)
    single = DiceCEBoundaryLoss(sigmoid=True, lambda_boundary=0.0)(outputs[0], torch.cat([vessels, maps], dim=1))
    assert float(single) == pytest.approx(float(DiceCELoss(sigmoid=True)(outputs[0], vessels)), rel=1e-6)


def test_where_monai_dicece_differs_multilabel_bce_and_ce_only_weights():
    _, labels = _real_slices(LABELS[6:7])
    labels = labels[:3]
    one_hot_labels = one_hot(labels, 3)
    logits = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    target = torch.cat([one_hot_labels, _target(labels, 3)[:, 1:]], dim=1)
    multilabel = DiceCEBoundaryLoss(sigmoid=True, include_background=False, lambda_dice=0.0, lambda_boundary=0.0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 1:], one_hot_labels[:, 1:])
    assert float(multilabel(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    # MONAI's DiceCELoss chooses by channel count: a softmax cross-entropy over the independent sigmoid channels
    monai_ce = DiceCELoss(sigmoid=True, include_background=False, lambda_dice=0.0)(logits, one_hot_labels)
    assert abs(float(monai_ce) - float(expected)) > 0.1
    weights = [0.2, 1.0, 3.0]
    dice_only = {"softmax": True, "to_onehot_y": True, "lambda_ce": 0.0, "lambda_boundary": 0.0}
    plain, weighted = DiceCEBoundaryLoss(**dice_only), DiceCEBoundaryLoss(**dice_only, ce_weight=weights)
    assert torch.equal(plain(logits, labels.float()), weighted(logits, labels.float()))  # the Dice is unweighted
    monai_dice = DiceCELoss(softmax=True, to_onehot_y=True, lambda_ce=0.0, weight=torch.tensor(weights))
    assert abs(float(monai_dice(logits, labels)) - float(plain(logits, labels.float()))) > 1e-3


def _bundle_schedule(bundle: str) -> tuple[ConfigParser, list]:
    """The shipped bundle's loss, boundary_weight and schedule handlers, parsed as MONAI does."""
    config = json.loads((BUNDLES / bundle / "configs" / "train.json").read_text())
    entries = [
        handler
        for handler in config["train"]["handlers"]
        if handler["_target_"] in ("ParamSchedulerHandler", "monai_unet2.losses.BoundaryWeightMetric")
    ]
    assert len(entries) == 2, entries
    content = {key: config[key] for key in ("imports", "loss", "boundary_weight")}
    content["handlers"] = entries
    parser = ConfigParser(content)
    return parser, parser.get_parsed_content("handlers")


def _run_recording_alpha(parser: ConfigParser, handlers: list, epochs: int, resume_from: dict | None = None) -> list:
    """(epoch, alpha) seen by every iteration of an ignite engine with ``handlers``, optionally resumed."""
    loss = parser.get_parsed_content("loss")
    weighted = getattr(loss, "loss", loss)
    seen: list = []
    engine = Engine(lambda engine, batch: seen.append((engine.state.epoch, weighted.lambda_boundary)))
    for handler in handlers:
        handler.attach(engine)
    if resume_from is not None:
        weighted.lambda_boundary = 123.0  # whatever the loss holds before, the first resumed epoch must set it
        engine.load_state_dict({**resume_from, "max_epochs": epochs})
    engine.run([0, 1], max_epochs=epochs)
    return seen


@pytest.mark.parametrize("bundle", ["hippocampus_unet25d_segmentation", "drive_vessel_u2net_segmentation"])
def test_shipped_schedule_gives_the_first_versions_alpha_every_epoch_and_after_resume(bundle):
    parser, handlers = _bundle_schedule(bundle)
    start, step, cap = (parser.get_parsed_content(f"boundary_weight#{key}") for key in ("start", "step", "max_weight"))
    epochs = 60

    def first_version(epoch: int) -> float:  # BoundaryWeightSchedule.weight_at
        return min(start + step * (epoch - 1), cap)

    seen = _run_recording_alpha(parser, handlers, epochs)
    assert [epoch for epoch, _ in seen] == [e for e in range(1, epochs + 1) for _ in range(2)]
    assert all(alpha == pytest.approx(first_version(epoch), abs=1e-15) for epoch, alpha in seen)
    # bit for bit what the loss multiplies with (float32)
    assert all(np.float32(alpha) == np.float32(first_version(epoch)) for epoch, alpha in seen)
    assert seen[-1][1] == cap and min(a for _, a in seen) == start

    parser, handlers = _bundle_schedule(bundle)
    first = Engine(lambda engine, batch: None)
    for handler in handlers:
        handler.attach(first)
    first.run([0, 1], max_epochs=3)
    assert first.state.metrics["boundary_weight"] == pytest.approx(first_version(3))
    parser, handlers = _bundle_schedule(bundle)
    resumed = _run_recording_alpha(parser, handlers, 5, resume_from=first.state_dict())
    assert resumed == [(e, pytest.approx(first_version(e), abs=1e-15)) for e in (4, 4, 5, 5)]


def test_setter_rebalances_with_a_floor_and_unwraps_deep_supervision():
    loss = DiceCEBoundaryLoss(softmax=True, to_onehot_y=True)
    setter = boundary_weight_setter(DeepSupervisionLoss(loss), rebalance=True, min_region_weight=0.1)
    seen = []
    for alpha in (0.5, 0.7, 0.9, 1.1, 2.0):
        setter(alpha)
        seen.append((loss.lambda_boundary, round(loss.region_weight, 6)))
    assert seen == [(0.5, 0.5), (0.7, 0.3), (0.9, 0.1), (1.0, 0.1), (1.0, 0.1)]
    boundary_weight_setter(loss)(0.25)
    assert loss.lambda_boundary == 0.25 and loss.region_weight == 0.1  # no rebalance: region weight untouched
    with pytest.raises(TypeError, match="lambda_boundary"):
        boundary_weight_setter(DiceCELoss())
    with pytest.raises(ValueError, match="min_region_weight"):
        boundary_weight_setter(loss, min_region_weight=1.5)


def _linear_schedule(loss, start: float, step: float, epochs_to_cap: int, rebalance: bool = False) -> list:
    """ParamSchedulerHandler raising alpha by ``step`` per epoch from ``start`` for ``epochs_to_cap`` epochs."""
    kwargs = {"initial_value": start, "step_constant": 1, "step_max_value": 1 + epochs_to_cap}
    kwargs["max_value"] = start + step * epochs_to_cap
    scheduler = ParamSchedulerHandler(
        boundary_weight_setter(loss, rebalance=rebalance),
        "linear",
        kwargs,
        epoch_level=True,
        event=Events.EPOCH_STARTED,
    )
    return [scheduler, BoundaryWeightMetric(loss)]


def test_schedule_value_reaches_mlflow(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from monai.handlers import MLFlowHandler

    loss = DiceCEBoundaryLoss(sigmoid=True)
    engine = Engine(lambda engine, batch: {"loss": torch.tensor(1.0)})
    for handler in _linear_schedule(loss, start=0.02, step=0.03, epochs_to_cap=10):
        handler.attach(engine)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MLFlowHandler(tracking_uri=uri, iteration_log=False, experiment_name="schedule", run_name="alpha").attach(engine)
    engine.run([0], max_epochs=3)
    assert engine.state.boundary_weight == pytest.approx(0.08)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.search_runs(client.get_experiment_by_name("schedule").experiment_id)[0]
    history = client.get_metric_history(run.info.run_id, "boundary_weight")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.02), (2, 0.05), (3, 0.08)]


def _train_and_score(loss, handlers: list | None, epochs: int) -> float:
    train_images, train_labels = _real_slices(LABELS[:9])
    test_images, test_labels = _real_slices(LABELS[9:])
    items = [{"image": image, "label": label} for image, label in zip(train_images, train_labels)]
    transforms = Compose(
        [SignedDistanceMapd(num_classes=3), ConcatItemsd(keys=["label", "distance_map"], name="label")]
    )
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(Dataset(items, transforms), batch_size=16, shuffle=True, generator=generator)
    torch.manual_seed(0)
    network = BasicUNet(2, 1, 3, features=(8, 8, 16, 32, 64, 8))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-2),
        loss_function=loss,
        train_handlers=handlers,
    )
    trainer.run()
    network.eval()
    with torch.no_grad():
        prediction = network(test_images).argmax(dim=1, keepdim=True)
    dice = DiceMetric(include_background=False)(one_hot(prediction, 3), one_hot(test_labels, 3))
    return float(dice.nanmean())


class _RegionOnly(DiceCELoss):
    """MONAI DiceCE on the label part of a target that also carries distance maps."""

    def forward(self, input, target):
        return super().forward(input, target[:, :1])


@pytest.mark.slow
def test_training_with_supervised_trainer_is_no_worse_than_dice_ce(single_thread):
    epochs = 6
    loss = DiceCEBoundaryLoss(softmax=True, to_onehot_y=True)
    ours = _train_and_score(loss, _linear_schedule(loss, 0.05, 0.05, epochs, rebalance=True), epochs)
    dice_ce = _train_and_score(_RegionOnly(softmax=True, to_onehot_y=True), None, epochs)
    print(f"held-out Dice after {epochs} epochs: Dice+CE {dice_ce:.4f}, Dice+CE+boundary (scheduled) {ours:.4f}")
    assert loss.lambda_boundary == pytest.approx(0.05 * epochs)
    assert loss.region_weight == pytest.approx(1 - 0.05 * epochs)
    assert dice_ce > 0.5
    assert ours >= dice_ce - 0.05
