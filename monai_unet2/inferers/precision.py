"""Mixed precision and memory layout for inference and training, on CPUs as well as GPUs.

MONAI's engines (``SupervisedTrainer`` / ``SupervisedEvaluator``, 1.6) autocast with ``torch.autocast("cuda")``
only, so their ``amp=True`` does nothing on a CPU. :class:`AutocastInferer` wraps any MONAI inferer (e.g.
``SimpleInferer`` in a trainer) in ``torch.autocast`` on the input's device, optionally feeds the network
``channels_last`` tensors, and returns float32: the loss and the backward pass then run outside the autocast
region, as PyTorch recommends. :class:`~monai_unet2.inferers.SlidingWindowSliceInferer` takes the same ``amp`` and
``channels_last`` arguments for its windows.

bfloat16 needs no loss scaling (it has float32's exponent range), so it suits training without a ``GradScaler``.
On a CPU it is only fast with native bfloat16 instructions (AVX-512 BF16 or AMX); elsewhere it is emulated and
slower than float32, so ``amp=True`` ("auto") picks it only there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["AutocastInferer", "autocast", "cast_floating", "cpu_supports_bf16", "resolve_amp_dtype", "to_memory_format"]

_DTYPE_NAMES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_OFF = (None, False, "none", "float32", "fp32", torch.float32)


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX tiles), where bf16 autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_amp_dtype(amp: bool | str | torch.dtype | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype that ``amp`` asks for on ``device``, or ``None`` for full precision.

    Args:
        amp: ``False`` / ``None`` / ``"float32"``: no autocast. ``True`` / ``"auto"``: the fastest low precision the
            device supports: bfloat16 on a CPU with native bf16 (none otherwise), bfloat16 on a CUDA GPU that
            supports it, float16 on other CUDA GPUs. ``"bfloat16"`` / ``"bf16"`` / ``"float16"`` / ``"fp16"`` or a
            ``torch.dtype``: that dtype.
        device: where the network runs.
    """
    if isinstance(amp, str):
        amp = amp.lower()
    if amp in _OFF:
        return None
    device = torch.device(device)
    if amp is True or amp == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if cpu_supports_bf16() else None
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if isinstance(amp, torch.dtype) and amp in (torch.bfloat16, torch.float16):
        return amp
    if isinstance(amp, str) and amp in _DTYPE_NAMES:
        return _DTYPE_NAMES[amp]
    raise ValueError(
        f"amp must be a bool, 'auto', 'bfloat16', 'float16', 'float32' or such a torch.dtype, got {amp!r}."
    )


def autocast(dtype: torch.dtype | None, device: torch.device | str) -> AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context when ``dtype`` is ``None``.

    Args:
        dtype: autocast dtype from :func:`resolve_amp_dtype`.
        device: where the network runs.
    """
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def to_memory_format(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``tensor`` in ``channels_last`` (4D) / ``channels_last_3d`` (5D) memory format when asked, else as is.

    Args:
        tensor: network input.
        channels_last: whether to convert.
    """
    if not channels_last or tensor.ndim not in (4, 5):
        return tensor
    layout = torch.channels_last if tensor.ndim == 4 else torch.channels_last_3d
    return tensor.contiguous(memory_format=layout)


def cast_floating(output: Any, dtype: torch.dtype | None) -> Any:
    """Cast the floating-point tensors of a network output (tensor, list / tuple, dict) to ``dtype``.

    Args:
        output: what the network (or inferer) returned.
        dtype: target dtype; ``None`` keeps the output as is.
    """
    if dtype is None:
        return output
    if isinstance(output, torch.Tensor):
        return output.to(dtype) if output.is_floating_point() and output.dtype != dtype else output
    if isinstance(output, Mapping):
        return type(output)({key: cast_floating(value, dtype) for key, value in output.items()})
    if isinstance(output, (list, tuple)):
        return type(output)(cast_floating(value, dtype) for value in output)
    return output


class AutocastInferer(Inferer):
    """Run any inferer under ``torch.autocast`` on the input's device, on CPUs as well as GPUs.

    In a MONAI trainer the forward pass is ``inferer(inputs, network)`` and the loss is computed on its output, so
    wrapping the training inferer gives mixed-precision training on a CPU, which ``SupervisedTrainer(amp=True)``
    does not (it autocasts CUDA only)::

        "inferer": {"_target_": "monai_unet2.inferers.AutocastInferer", "amp": true, "channels_last": true}

    Pair ``channels_last`` with a network converted once, ``network.to(memory_format=torch.channels_last)``.

    Args:
        inferer: the inferer to wrap (default ``SimpleInferer()``, i.e. ``network(inputs)``).
        amp: autocast dtype, see :func:`resolve_amp_dtype` (default ``True``: bf16 where the device has it).
        channels_last: feed the inner inferer ``channels_last`` (4D) / ``channels_last_3d`` (5D) inputs.
        output_dtype: dtype of the floating-point outputs (default float32, so that the loss runs in full
            precision); ``None`` keeps the network's dtype.
    """

    def __init__(
        self,
        inferer: Inferer | None = None,
        amp: bool | str | torch.dtype | None = True,
        channels_last: bool = False,
        output_dtype: torch.dtype | None = torch.float32,
    ) -> None:
        super().__init__()
        resolve_amp_dtype(amp, "cpu")  # validate early
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.amp = amp
        self.channels_last = bool(channels_last)
        self.output_dtype = output_dtype

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Infer ``inputs`` with ``network`` through the wrapped inferer, under autocast.

        Args:
            inputs: network input batch; its device selects the autocast device.
            network: the model.
            args: optional args passed to the inferer.
            kwargs: optional keyword args passed to the inferer.
        """
        dtype = resolve_amp_dtype(self.amp, inputs.device)
        with autocast(dtype, inputs.device):
            output = self.inferer(to_memory_format(inputs, self.channels_last), network, *args, **kwargs)
        return cast_floating(output, self.output_dtype if dtype is not None else None)
