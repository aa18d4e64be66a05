"""OpenVINONetwork: same labels as PyTorch on real data, bundle weights load through MONAI's CheckpointLoader."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointLoader

from monai_unet2.inferers import OpenVINONetwork, SlidingWindowSliceInferer, openvino_available
from monai_unet2.networks import UNet

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus_unet25d_segmentation"

pytestmark = [
    pytest.mark.skipif(not openvino_available(), reason="needs the optional openvino package"),
    pytest.mark.usefixtures("single_thread"),
]


def hippocampus_volume() -> torch.Tensor:
    image = np.asarray(nib.load(str(BUNDLE / "sample_data" / "imagesTr" / "hippocampus_004.nii.gz")).dataobj)
    image = image.astype(np.float32)
    return torch.from_numpy((image - image.mean()) / image.std())[None, None]


def shipped_unet() -> UNet:
    network = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32)
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    return network.eval()


def test_shipped_unet_through_checkpoint_loader_gives_the_pytorch_labels():
    """The bundle's inference path: CheckpointLoader fills the wrapper, the evaluator runs the slice inferer."""
    network = shipped_unet()
    wrapper = OpenVINONetwork(UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32), precision="f32")
    assert list(wrapper.state_dict()) == list(network.state_dict())
    volume = hippocampus_volume()
    inferer = SlidingWindowSliceInferer((48, 64), 64, 2, 2, 0.5, "gaussian", padding_mode="replicate")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=torch.utils.data.DataLoader([{"image": volume[0]}], batch_size=1),
        network=wrapper,
        inferer=inferer,
        val_handlers=[CheckpointLoader(load_path=str(BUNDLE / "models" / "model.pt"), load_dict={"model": wrapper})],
    )
    evaluator.run()
    ours = evaluator.state.output[0]["pred"]
    with torch.no_grad():
        expected = inferer(volume, network)[0]
    assert torch.allclose(ours, expected, atol=1e-3, rtol=0)
    assert torch.equal(ours.argmax(0), expected.argmax(0))
    assert (expected.argmax(0) > 0).sum() > 100  # the shipped model finds the hippocampus


def test_multi_size_windows_and_reloading_weights():
    torch.manual_seed(0)
    network = UNet(spatial_dims=2, in_channels=3, out_channels=2, features=4).eval()
    wrapper = OpenVINONetwork(network, precision="f32", threads=1).eval()
    with torch.no_grad():
        for shape in [(2, 3, 64, 64), (1, 3, 100, 77)]:
            x = torch.randn(shape)
            assert torch.allclose(wrapper(x), network(x), atol=1e-4)
        first = wrapper.compiled_model(x)
        assert wrapper.compiled_model(torch.randn(3, 3, 32, 32)) is first  # one conversion serves every size
        torch.manual_seed(1)
        other = UNet(spatial_dims=2, in_channels=3, out_channels=2, features=4)
        wrapper.load_state_dict(other.state_dict())
        assert wrapper._compiled is None
        assert torch.allclose(wrapper(x), other.eval()(x), atol=1e-4)


def test_training_mode_and_gradients_run_the_torch_network():
    torch.manual_seed(2)
    network = UNet(spatial_dims=2, in_channels=1, out_channels=2, features=4)
    wrapper = OpenVINONetwork(network).train()
    out = wrapper(torch.randn(2, 1, 32, 32))
    out.mean().backward()
    assert all(p.grad is not None for p in network.parameters())
    assert wrapper._compiled is None
    with pytest.raises(ValueError, match="precision"):
        OpenVINONetwork(network, precision="int8")


def test_drive_bundle_network_runs_openvino_with_the_pytorch_labels():
    """The DRIVE inference config's ``network`` is OpenVINO f32 on a CPU; vessel labels equal PyTorch fp32's."""
    from monai.bundle import ConfigParser
    from PIL import Image

    from monai_unet2.inferers import inference_network

    drive = REPO / "bundles" / "drive_vessel_u2net_segmentation"
    parser = ConfigParser()
    parser.read_config(str(drive / "configs" / "inference.json"))
    parser["bundle_root"] = str(drive)
    network = parser.get_parsed_content("network")
    assert isinstance(network, OpenVINONetwork) and network.precision == "f32"
    network.load_state_dict(torch.load(drive / "models" / "model.pt", map_location="cpu", weights_only=True))
    reference = inference_network(network.network, "torch")
    assert reference is network.network
    drive_dir = Path(os.environ.get("DRIVE_DIR", REPO.parent / "shared" / "data" / "drive" / "training"))
    pixels = np.asarray(Image.open(drive_dir / "images" / "21_training.tif"), dtype=np.float32)[200:328, 200:328]
    pixels = (pixels - pixels.mean(axis=(0, 1))) / pixels.std(axis=(0, 1))  # z-scored per channel, as the bundle
    batch = torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        ours, expected = network.eval()(batch), reference.eval()(batch)
    ours, expected = (out[0] if isinstance(out, list | tuple) else out for out in (ours, expected))
    assert torch.equal(ours > 0, expected > 0)
    assert (expected > 0).sum() > 200  # vessels in the crop
    with pytest.raises(ValueError, match="backend"):
        inference_network(reference, "onnx")
