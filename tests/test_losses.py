"""DiceBCEBoundaryLoss, deep supervision through MONAI's DeepSupervisionLoss, and BoundaryWeightSchedule."""

from __future__ import annotations

import glob
import os
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.losses import BoundaryLoss, DeepSupervisionLoss, DiceCELoss
from monai.metrics import DiceMetric
from monai.networks import one_hot
from monai.networks.nets import BasicUNet
from monai.transforms import Compose, ConcatItemsd

from monai_unet2.losses import BoundaryWeightSchedule, DiceBCEBoundaryLoss
from monai_unet2.transforms.distance import SignedDistanceMapd, signed_distance_map

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "bundles", "hippocampus_unet25d_segmentation", "sample_data")
LABELS = sorted(glob.glob(os.path.join(SAMPLE, "labelsTr", "*.nii.gz")))


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
    loss = DiceBCEBoundaryLoss(lambda_dice=0.0, lambda_ce=0.0, lambda_boundary=1.0, **kwargs)
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
    assert all(a < b for a, b in zip(costs, costs[1:]))


def test_matches_monai_dicece_and_boundary_loss_on_real_slices():
    images, labels = _real_slices(LABELS[:1])
    label = labels[:4]
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 48, 48)
    target = _target(label, 3)
    region = DiceBCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_boundary=0.0)(logits, target)
    reference_region = DiceCELoss(softmax=True, to_onehot_y=True)(logits, label)
    assert torch.allclose(region, reference_region, atol=1e-5)
    class_weights = [0.2, 1.0, 3.0]
    weighted = DiceBCEBoundaryLoss(
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
    loss = DiceBCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_boundary=0.5)
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
    loss = DiceBCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_dice=0.0, lambda_ce=0.0, lambda_boundary=1.0)
    loss(logits, target).backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    full = DiceBCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_boundary=0.3)
    both = full(logits, target).detach()
    each = [full(logits[i : i + 1], target[i : i + 1]).detach() for i in range(2)]
    assert float(both) == pytest.approx(float(sum(each)) / 2, rel=1e-5)


def test_cpu_autocast_bfloat16_is_finite_and_close_to_float32(single_thread):
    _, label = _real_slices(LABELS[3:4])
    target = _target(label[:2], 3)
    network = BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4))
    image = torch.randn(2, 1, 48, 48)
    loss = DiceBCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_boundary=0.5)
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
    loss = DiceBCEBoundaryLoss(sigmoid=True, lambda_boundary=1.0)
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
    loss = DiceBCEBoundaryLoss(softmax=True, to_onehot_y=True, lambda_boundary=0.2)
    each = [float(loss(output, target)) for output in outputs]
    same = DeepSupervisionLoss(loss, weight_mode="same")
    assert float(same(outputs, target)) == pytest.approx(sum(each), rel=1e-5)
    weights = [0.5**i for i in range(7)]
    halving = DeepSupervisionLoss(loss, weights=weights)
    assert float(halving(outputs, target)) == pytest.approx(sum(w * v for w, v in zip(weights, each)), rel=1e-5)
    assert float(same(outputs[0], target)) == pytest.approx(each[0], rel=1e-6)


def _engine_recording_alpha(loss: DiceBCEBoundaryLoss, seen: list) -> Engine:
    def step(engine, batch):
        seen.append((engine.state.epoch, loss.lambda_boundary, loss.region_weight))

    return Engine(step)


def test_schedule_per_epoch_cap_rebalance_and_resume():
    loss = DiceBCEBoundaryLoss(softmax=True, to_onehot_y=True)
    seen: list = []
    engine = _engine_recording_alpha(loss, seen)
    BoundaryWeightSchedule(DeepSupervisionLoss(loss), start=0.01, step=0.01, max_weight=0.04).attach(engine)
    engine.run([0, 1], max_epochs=5)
    assert [round(a, 6) for e, a, _ in seen[::2]] == [0.01, 0.02, 0.03, 0.04, 0.04]
    assert engine.state.metrics["boundary_weight"] == pytest.approx(0.04)
    assert engine.state.boundary_weight == pytest.approx(0.04)

    seen.clear()
    engine = _engine_recording_alpha(loss, seen)
    BoundaryWeightSchedule(loss, start=0.5, step=0.2, rebalance=True, region_floor=0.1).attach(engine)
    engine.run([0], max_epochs=5)
    assert [round(a, 6) for _, a, _ in seen] == [0.5, 0.7, 0.9, 1.0, 1.0]
    assert [round(r, 6) for _, _, r in seen] == [0.5, 0.3, 0.1, 0.1, 0.1]

    loss = DiceBCEBoundaryLoss(softmax=True, to_onehot_y=True)
    seen.clear()
    first = _engine_recording_alpha(loss, seen)
    BoundaryWeightSchedule(loss).attach(first)
    first.run([0, 1, 2], max_epochs=3)
    checkpoint = first.state_dict()
    loss.lambda_boundary = 123.0
    seen.clear()
    resumed = _engine_recording_alpha(loss, seen)
    BoundaryWeightSchedule(loss).attach(resumed)
    resumed.load_state_dict({**checkpoint, "max_epochs": 5})
    resumed.run([0, 1, 2])
    assert [(e, round(a, 6)) for e, a, _ in seen[::3]] == [(4, 0.04), (5, 0.05)]


def test_schedule_value_reaches_mlflow(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from monai.handlers import MLFlowHandler

    loss = DiceBCEBoundaryLoss(sigmoid=True)
    engine = Engine(lambda engine, batch: {"loss": torch.tensor(1.0)})
    BoundaryWeightSchedule(loss, start=0.02, step=0.03).attach(engine)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MLFlowHandler(tracking_uri=uri, iteration_log=False, experiment_name="schedule", run_name="alpha").attach(engine)
    engine.run([0], max_epochs=3)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.search_runs(client.get_experiment_by_name("schedule").experiment_id)[0]
    history = client.get_metric_history(run.info.run_id, "boundary_weight")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.02), (2, 0.05), (3, 0.08)]


def _train_and_score(loss, schedule: BoundaryWeightSchedule | None, epochs: int) -> float:
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
        train_handlers=[schedule] if schedule is not None else None,
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


def test_training_with_supervised_trainer_is_no_worse_than_dice_ce(single_thread):
    epochs = 6
    loss = DiceBCEBoundaryLoss(softmax=True, to_onehot_y=True)
    ours = _train_and_score(loss, BoundaryWeightSchedule(loss, start=0.05, step=0.05, rebalance=True), epochs)
    dice_ce = _train_and_score(_RegionOnly(softmax=True, to_onehot_y=True), None, epochs)
    print(f"held-out Dice after {epochs} epochs: Dice+CE {dice_ce:.4f}, Dice+CE+boundary (scheduled) {ours:.4f}")
    assert loss.lambda_boundary == pytest.approx(0.05 * epochs)
    assert dice_ce > 0.5
    assert ours >= dice_ce - 0.05


def test_bundle_config_builds_deep_supervision_loss_and_schedule():
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "loss": {
                "_target_": "DeepSupervisionLoss",
                "loss": {
                    "_target_": "monai_unet2.losses.DiceBCEBoundaryLoss",
                    "sigmoid": True,
                    "lambda_boundary": 0.01,
                },
                "weight_mode": "same",
            },
            "schedule": {
                "_target_": "monai_unet2.losses.BoundaryWeightSchedule",
                "loss": "@loss",
                "start": 0.02,
                "step": 0.02,
            },
        }
    )
    loss, schedule = parser.get_parsed_content("loss"), parser.get_parsed_content("schedule")
    assert isinstance(loss, DeepSupervisionLoss) and schedule.loss is loss.loss
    engine = Engine(lambda engine, batch: None)
    schedule.attach(engine)
    engine.run([0], max_epochs=2)
    assert loss.loss.lambda_boundary == pytest.approx(0.04)
