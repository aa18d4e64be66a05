"""Mixed precision and memory layout: amp resolution, autocast in the slice inferer, AutocastInferer in training."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer

from monai_unet2.inferers import AutocastInferer, SlidingWindowSliceInferer, cpu_supports_bf16, resolve_amp_dtype
from monai_unet2.networks import U2Net, UNet

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "bundles" / "hippocampus_unet25d_segmentation" / "sample_data"

pytestmark = pytest.mark.usefixtures("single_thread")


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux /proc/cpuinfo")
def test_native_bf16_detection_matches_the_kernel_cpu_flags():
    flags = cpu_flags()
    assert cpu_supports_bf16() == bool({"avx512_bf16", "amx_bf16", "amx_tile"} & flags)


def test_resolve_amp_dtype():
    for off in (False, None, "float32", "FP32", torch.float32):
        assert resolve_amp_dtype(off, "cpu") is None
    assert resolve_amp_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_amp_dtype("bf16", "cuda") is torch.bfloat16
    assert resolve_amp_dtype("fp16", "cpu") is torch.float16
    assert resolve_amp_dtype(torch.float16, "cuda:1") is torch.float16
    assert resolve_amp_dtype(True, "cpu") == (torch.bfloat16 if cpu_supports_bf16() else None)
    assert resolve_amp_dtype("auto", "cpu") == resolve_amp_dtype(True, "cpu")
    with pytest.raises(ValueError, match="amp must be"):
        resolve_amp_dtype("int8", "cpu")
    with pytest.raises(ValueError, match="amp must be"):
        SlidingWindowSliceInferer(amp="float64")


class DtypeProbe:
    """Forward hook recording the dtype of every convolution output (the precision the network computed in)."""

    def __init__(self, network: torch.nn.Module):
        self.dtypes: set[torch.dtype] = set()
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(lambda _m, _i, out: self.dtypes.add(out.dtype))


def hippocampus_volume() -> torch.Tensor:
    path = SAMPLE / "imagesTr" / "hippocampus_004.nii.gz"
    image = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    return torch.from_numpy((image - image.mean()) / image.std())[None, None]


def test_slice_inferer_bf16_autocast_and_channels_last_on_a_real_volume():
    """bf16 windows give float32 probabilities close to fp32 and almost the same labels (random-weight UNet)."""
    volume = hippocampus_volume()
    torch.manual_seed(0)
    network = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=8).eval()
    probe = DtypeProbe(network)
    settings = {"roi_size": (48, 64), "sw_batch_size": 16, "context_slices": 2, "tta_activation": "softmax"}
    with torch.no_grad():
        full = SlidingWindowSliceInferer(**settings)(volume, network)
        assert probe.dtypes == {torch.float32}
        probe.dtypes.clear()
        low = SlidingWindowSliceInferer(**settings, amp="bfloat16", channels_last=True)(volume, network)
    assert probe.dtypes == {torch.bfloat16}
    assert low.dtype == torch.float32
    assert (low - full).abs().max() < 0.05
    assert (low.argmax(1) != full.argmax(1)).float().mean() < 0.01


def test_evaluator_on_cpu_runs_the_network_in_bf16_through_the_inferer():
    """MONAI's evaluator autocasts CUDA only; the inferer's ``amp`` does it on the CPU."""
    torch.manual_seed(1)
    network = UNet(spatial_dims=2, in_channels=3, out_channels=2, features=4).eval()
    probe = DtypeProbe(network)
    data = [{"image": hippocampus_volume()[0, :, :, :, 10:14], "label": torch.zeros(1, 1, 1, 1)}]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=torch.utils.data.DataLoader(data, batch_size=1),
        network=network,
        inferer=SlidingWindowSliceInferer((16, 16), 8, 2, 1, amp="bfloat16"),
        amp=True,  # what the bundles set on CUDA; on a CPU it alone would change nothing
    )
    evaluator.run()
    assert probe.dtypes == {torch.bfloat16}
    assert evaluator.state.output[0]["pred"].dtype == torch.float32


@pytest.mark.parametrize("channels_last", [False, True])
def test_autocast_inferer_trains_in_bf16_with_monai_supervised_trainer(channels_last):
    """A real SupervisedTrainer on hippocampus slices: forward in bf16, loss and gradients in float32, weights move."""
    volume = hippocampus_volume()[0]
    label = torch.from_numpy(
        np.asarray(nib.load(str(SAMPLE / "labelsTr" / "hippocampus_004.nii.gz")).dataobj, dtype=np.int64)
    )
    samples = [
        {
            "image": volume[:, :32, :48, s - 2 : s + 3].permute(0, 3, 1, 2).flatten(0, 1),
            "label": label[None, :32, :48, s],
        }
        for s in range(10, 18)
    ]
    torch.manual_seed(2)
    network = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=4)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    probe = DtypeProbe(network)
    before = [p.detach().clone() for p in network.parameters()]
    losses = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=torch.utils.data.DataLoader(samples, batch_size=4),
        network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=1e-2),
        loss_function=lambda pred, target: (
            losses.append(pred.dtype) or torch.nn.functional.cross_entropy(pred, target[:, 0])
        ),
        inferer=AutocastInferer(amp="bfloat16", channels_last=channels_last),
    )
    trainer.run()
    assert probe.dtypes == {torch.bfloat16}
    assert set(losses) == {torch.float32}
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in network.parameters())
    assert all(torch.isfinite(p).all() for p in network.parameters())
    assert any((p - b).abs().max() > 0 for p, b in zip(network.parameters(), before))
    assert np.isfinite(float(trainer.state.output[0]["loss"]))


def test_autocast_inferer_casts_deep_supervision_outputs_and_can_be_off():
    torch.manual_seed(3)
    network = U2Net(spatial_dims=2, in_channels=3, out_channels=1, variant="small", deep_supervision=True).train()
    x = torch.randn(2, 3, 32, 32)
    outputs = AutocastInferer(amp="bfloat16")(x, network)
    assert isinstance(outputs, list) and len(outputs) == 7
    assert all(o.dtype == torch.float32 for o in outputs)
    outputs[0].mean().backward()
    plain = AutocastInferer(amp=False)(x, network.eval())
    with torch.no_grad():
        assert torch.equal(plain, network(x))
