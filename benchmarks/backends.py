"""ONNX Runtime and OpenVINO against PyTorch on this CPU, for both bundles' networks, through the bundle inferers.

Run: ``.venv/bin/python benchmarks/backends.py [--quick] [--threads 2]``. Needs ``onnx``, ``onnxscript``,
``onnxruntime`` and ``openvino`` (``.venv/bin/pip install -c constraints.txt onnx onnxscript onnxruntime openvino``;
a dry run showed that none of them pulls another torch). Prints a markdown table and writes it to
``benchmarks/results/backends.md``.

Each network is exported once to ONNX (``torch.onnx.export``, dynamic batch and spatial sizes) and wrapped as a
callable that takes and returns torch tensors, so the bundle's own :class:`SlidingWindowSliceInferer` drives every
backend over the same windows. Workloads:

- hippocampus UNet (base 32, 5 → 3, shipped weights) on a centred slab of the CT series of ``end_to_end.py``
  (500×500 slices at 1 mm), whole slices padded to 512×512, ``sw_batch_size`` 4: the CPU default this issue chose;
- DRIVE U²-Net small (3 → 1, shipped weights) on two DRIVE training images (584×565), the bundle's inferer
  (128² windows, overlap 0.25, Gaussian), labels = logits > 0 (sigmoid > 0.5).

Speed-ups are medians of time(PyTorch fp32) / time(backend) over interleaved rounds; "labels differing" counts
voxels whose label differs from PyTorch fp32 (and from PyTorch bf16 + channels_last, the package's fast path).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.end_to_end import CT_SERIES, bundle_config, bundle_network  # noqa: E402
from benchmarks.timing import conditions, interleaved, write_result  # noqa: E402
from monai_unet2.inferers import SlidingWindowSliceInferer  # noqa: E402

DRIVE_BUNDLE = REPO / "bundles" / "drive_vessel_u2net_segmentation"
DRIVE_IMAGES = REPO.parent / "shared" / "data" / "drive" / "training" / "images"


class OnnxRuntimeNetwork:
    """An ONNX model run by ONNX Runtime's CPU provider, called like a torch module."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.contiguous().numpy()})[0])


class OpenVinoNetwork:
    """An ONNX model compiled by OpenVINO for the CPU, called like a torch module."""

    def __init__(self, path: Path, threads: int, precision: str | None):
        import openvino

        config = {"INFERENCE_NUM_THREADS": threads}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        core = openvino.Core()
        self.model = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.precision = str(self.model.get_property("INFERENCE_PRECISION_HINT"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.model(x.contiguous().numpy())[0]))


def export_onnx(network: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export ``network`` with dynamic batch, height and width."""
    dynamic = {"x": {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}}
    torch.onnx.export(network, (example,), str(path), dynamo=True, dynamic_shapes=dynamic)
    return path


def backends(network: torch.nn.Module, example: torch.Tensor, folder: Path, threads: int) -> dict:
    """name -> (callable network, autocast bf16?, channels_last?) for PyTorch and the exported backends."""
    path = export_onnx(network, example, folder / "network.onnx")
    openvino_default = OpenVinoNetwork(path, threads, None)
    return {
        "PyTorch fp32": (network, False, False),
        "PyTorch bf16 + channels_last": (network, True, True),
        "ONNX Runtime fp32": (OnnxRuntimeNetwork(path, threads), False, False),
        "OpenVINO f32": (OpenVinoNetwork(path, threads, "f32"), False, False),
        f"OpenVINO default ({openvino_default.precision} on this CPU)": (openvino_default, False, False),
    }


def compare(workload: str, inferer_arguments: dict, volumes: list, network, threads: int, repeats: int, labels):
    """Rows of one workload: every backend through the same inferer on the same volumes."""
    with tempfile.TemporaryDirectory() as folder:
        example = torch.randn(2, network_in_channels(network), 64, 64)
        candidates, outputs = {}, {}
        with torch.no_grad():
            for name, (model, bf16, layout) in backends(network, example, Path(folder), threads).items():
                inferer = SlidingWindowSliceInferer(**inferer_arguments, amp=bf16, channels_last=layout)
                candidates[name] = lambda i=inferer, m=model: [i(v, m) for v in volumes]
                outputs[name] = [labels(p) for p in candidates[name]()]
            timings = interleaved(candidates, repeats)
    rows = []
    for name in candidates:
        differing = {
            ref: sum((a != b).sum().item() for a, b in zip(outputs[name], outputs[ref]))
            for ref in ("PyTorch fp32", "PyTorch bf16 + channels_last")
        }
        total = sum(o.numel() for o in outputs[name])
        rows.append(
            f"| {workload} | {name} | {timings.wall(name):.2f} | {timings.ratio('PyTorch fp32', name):.2f} | "
            f"{timings.ratio('PyTorch bf16 + channels_last', name):.2f} | "
            f"{differing['PyTorch fp32']} ({100 * differing['PyTorch fp32'] / total:.3f} %) | "
            f"{differing['PyTorch bf16 + channels_last']} |"
        )
        print(rows[-1], flush=True)
    return rows


def network_in_channels(network: torch.nn.Module) -> int:
    """Input channels of the first convolution."""
    return next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d)).in_channels


def hippocampus_workload(num_slices: int) -> tuple[dict, list, torch.nn.Module]:
    parser = bundle_config("inference")
    network = bundle_network(parser)
    volume = parser.get_parsed_content("preprocessing")({"image": str(CT_SERIES)})["image"].as_tensor()[None]
    first = volume.shape[-1] // 2 - num_slices // 2
    arguments = {"roi_size": None, "sw_batch_size": 4, "slice_axis": 2, "context_slices": 2}
    arguments.update({"padding_mode": "replicate", "size_divisible_by": 16})
    return arguments, [volume[..., first : first + num_slices].contiguous()], network


def drive_workload(num_images: int) -> tuple[dict, list, torch.nn.Module]:
    parser = ConfigParser()
    parser.read_config(str(DRIVE_BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(DRIVE_BUNDLE)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(DRIVE_BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    preprocessing = parser.get_parsed_content("preprocessing")
    images = sorted(DRIVE_IMAGES.iterdir())[:num_images]
    volumes = [preprocessing({"image": str(path)})["image"].as_tensor()[None] for path in images]
    inferer = parser.get("inferer")
    arguments = {k: inferer[k] for k in ("sw_batch_size", "overlap", "mode", "padding_mode")}
    return {**arguments, "roi_size": parser["roi_size"]}, volumes, network.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one CT slice, one DRIVE image, one round")
    parser.add_argument("--threads", type=int, default=2, help="threads for every backend (default 2)")
    parser.add_argument("--slices", type=int, default=4, help="CT slices (default 4)")
    parser.add_argument("--images", type=int, default=2, help="DRIVE images (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds (default 5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, slices, images = (1, 1, 1) if args.quick else (args.rounds, args.slices, args.images)
    rows = []
    arguments, volumes, network = hippocampus_workload(slices)
    rows += compare(
        f"hippocampus UNet, {slices} CT slices",
        arguments,
        volumes,
        network,
        args.threads,
        repeats,
        lambda p: p.argmax(1),
    )
    arguments, volumes, network = drive_workload(images)
    rows += compare(
        f"DRIVE U²-Net small, {images} images", arguments, volumes, network, args.threads, repeats, lambda p: p > 0
    )
    body = "\n".join(
        [
            f"{conditions(args.threads)}. Medians of {repeats} interleaved round(s).",
            "",
            "| workload | backend | median wall s | speed-up vs PyTorch fp32 | speed-up vs PyTorch bf16 + "
            "channels_last | labels differing from PyTorch fp32 | labels differing from PyTorch bf16 + cl |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print("\n" + body)
    if not args.quick:
        write_result("backends", "ONNX Runtime and OpenVINO against PyTorch on this CPU", body)


if __name__ == "__main__":
    main()
