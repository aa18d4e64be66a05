"""OpenVINO as an optional CPU inference backend, wrapped as a torch module so bundle configs keep their shape.

Measured on the development CPU (``benchmarks/backends.py``, results in ``docs/performance.md``), OpenVINO ran both
bundles' networks faster than PyTorch's best CPU path (bf16 autocast + ``channels_last``), with the same labels;
:func:`inference_network` picks the backend in a bundle's ``inference.json`` (the DRIVE bundle uses OpenVINO f32
wherever it is installed: identical labels, 3.5-5x faster on U²-Net).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

__all__ = ["OpenVINONetwork", "inference_network", "openvino_available"]


def openvino_available() -> bool:
    """Whether the ``openvino`` package is installed (without importing it: its import takes a while)."""
    return importlib.util.find_spec("openvino") is not None


_PRECISIONS = {"auto": None, "f32": "f32", "float32": "f32", "bf16": "bf16", "bfloat16": "bf16"}


class OpenVINONetwork(torch.nn.Module):
    """Run a trained 2D / 3D torch network with OpenVINO on the CPU, as a drop-in ``network`` for inference.

    The torch network stays the source of truth: ``load_state_dict`` (and so MONAI's ``CheckpointLoader``) loads
    into it with its own parameter names, and ``state_dict`` returns its dictionary. On the first call in eval mode
    without gradients on a CPU tensor it is converted with ``openvino.convert_model`` (batch and spatial sizes left
    dynamic, so one conversion serves every window size) and compiled for the CPU; the compiled model is cached
    until the weights are loaded again. In training mode, with gradients enabled, or for tensors on another device
    the torch network runs instead. In a config::

        "network": "$monai_unet2.inferers.OpenVINONetwork(@network_def)"

    OpenVINO ignores ``torch.autocast``: its own ``precision`` applies.

    Args:
        network: the torch module to run.
        precision: ``"auto"`` (OpenVINO's default: bf16 on CPUs with native bf16 such as AVX-512 BF16 or AMX, f32
            elsewhere), ``"f32"`` or ``"bf16"``.
        threads: inference threads (default: ``torch.get_num_threads()`` when compiled).
    """

    def __init__(self, network: torch.nn.Module, precision: str = "auto", threads: int | None = None) -> None:
        super().__init__()
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}.")
        if not openvino_available():
            raise ImportError("OpenVINONetwork needs the openvino package: pip install openvino")
        self.network = network
        self.precision = precision
        self.threads = threads
        self._compiled: Any = None

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        """The wrapped network's state dict (same keys as without the wrapper)."""
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load into the wrapped network and drop the compiled model (it is rebuilt on the next call)."""
        self._compiled = None
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> OpenVINONetwork:
        """Set the mode of the wrapped network; the compiled model holds the weights it was converted with."""
        self._compiled = None if mode else self._compiled
        return super().train(mode)

    def compiled_model(self, example: torch.Tensor) -> Any:
        """The OpenVINO model compiled for the CPU, converted from the network on first use.

        Args:
            example: an input batch (its first item traces the network; its channel count is kept fixed).
        """
        if self._compiled is None:
            openvino, _ = optional_import("openvino")
            shape = openvino.PartialShape([-1, example.shape[1], *([-1] * (example.ndim - 2))])
            with torch.no_grad():
                model = openvino.convert_model(self.network.eval(), example_input=example[:1], input=[shape])
            threads = torch.get_num_threads() if self.threads is None else self.threads
            config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads)}
            if _PRECISIONS[self.precision] is not None:
                config["INFERENCE_PRECISION_HINT"] = _PRECISIONS[self.precision]
            self._compiled = openvino.Core().compile_model(model, "CPU", config)
        return self._compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The network's output for ``x``: one tensor, or a list when the network has several outputs."""
        if self.training or torch.is_grad_enabled() or x.device.type != "cpu":
            return self.network(x)
        compiled = self.compiled_model(x)
        results = compiled(np.ascontiguousarray(x.detach().float().numpy()))
        outputs = [torch.from_numpy(np.asarray(results[port])) for port in compiled.outputs]
        return outputs[0] if len(outputs) == 1 else outputs


_BACKENDS = ("auto", "torch", "openvino")


def inference_network(
    network: torch.nn.Module, backend: str = "auto", precision: str = "f32"
) -> torch.nn.Module | OpenVINONetwork:
    """The network an inference config runs: ``network`` itself, or it wrapped in :class:`OpenVINONetwork`.

    Args:
        network: the torch network, already on its device.
        backend: ``"torch"``; ``"openvino"`` (an error without the package); ``"auto"``: OpenVINO when the package
            is installed and the network is on the CPU, else torch.
        precision: OpenVINO precision (see :class:`OpenVINONetwork`); ``"f32"`` keeps PyTorch fp32's labels.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}.")
    on_cpu = all(parameter.device.type == "cpu" for parameter in network.parameters())
    if backend == "torch" or (backend == "auto" and not (on_cpu and openvino_available())):
        return network
    return OpenVINONetwork(network, precision=precision)
