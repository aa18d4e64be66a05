"""2D / 2.5D sliding-window inference of a 2D network over 3D volumes."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import BlendMode, PytorchPadMode, convert_to_dst_type, ensure_tuple, look_up_option, optional_import

from monai_unet2.inferers.precision import autocast, resolve_amp_dtype
from monai_unet2.inferers.slice_windows import build_plane_window_grid, neighbour_indices, select_output
from monai_unet2.inferers.window_batches import (
    blend_indexed,
    blend_run,
    gather_indexed,
    gather_run,
    window_runs,
)

tqdm, _ = optional_import("tqdm", name="tqdm")

__all__ = ["SlidingWindowSliceInferer"]

_ACTIVATIONS = ("softmax", "sigmoid")
_BATCHING = ("auto", "runs", "indexed")


class SlidingWindowSliceInferer(Inferer):
    """Run a 2D network on every slice of a volume, with neighbour slices as extra channels (2.5D).

    ``inferer(volume, network)`` with ``volume`` of shape ``(B, C, H, W, D)`` returns ``(B, out, H, W, D)``: for
    each slice along ``slice_axis`` the network sees ``C * (2k+1)`` channels, the slices at offsets ``-k..+k``
    (``k = context_slices``) for each input channel in turn, i.e. channel ``c * (2k+1) + (offset + k)``; this is
    the order of the 2.5D training transforms. The slice axis is replicate-padded, so edge slices get a prediction.
    Within a slice, windows of ``roi_size`` slide with ``overlap`` and are blended with a constant or Gaussian
    weight, exactly as MONAI's ``sliding_window_inference`` does on a 2D image. A 2D batch ``(B, C, H, W)`` is
    inferred as such (2D sliding window; ``slice_axis`` and ``context_slices`` are not used), so one bundle
    config serves 2D images and 3D volumes, including the ``(1, C, H, W, D)`` volumes that MONAI Label receives
    from 3D Slicer.

    Why not MONAI: ``SliceInferer`` feeds one slice per window (``roi_size`` 1 along the slice axis), so it cannot
    give a window its neighbours; emulating 2.5D with it or with ``sliding_window_inference`` means stacking the
    shifted volume ``2k+1`` times as channels before the call, which costs ``(2k+1)`` times the input memory
    (or, with a ``(h, w, 2k+1)`` window and a network output per window, ``2k+1`` output copies). Here the
    neighbours are gathered per window from the unpadded volume with clamped indices, windows from different
    slices share one network call (``sw_batch_size`` counts 2D windows), and since the in-plane window grid is the
    same for every slice, one 2D map of count-normalised weights replaces MONAI's volume-sized count map. Besides
    the input, the only volume-sized tensor is the output. Windows are taken slice-fastest (every slice at one
    in-plane position, then the next position), so a window batch is built with one strided copy and blended with
    one ``addcmul_`` per run of consecutive slices (see :mod:`monai_unet2.inferers.window_batches`): the Python work
    per batch does not grow with ``sw_batch_size``.

    Args:
        roi_size: in-plane window size ``(h, w)`` or one int for both; ``None`` / 0 / -1 entries take the full slice
            extent (default: whole slices).
        sw_batch_size: number of 2D windows per network call; windows may come from different slices.
        slice_axis: spatial axis to slide along, 0, 1 or 2 for H, W or D (``spatial_dim`` of MONAI's ``SliceInferer``);
            the default 2 gives axial slices for RAS-oriented volumes. A sequence, e.g. ``(0, 1, 2)``, runs each view and
            averages them (in probability space when ``tta_activation`` is set): this only makes sense for
            (near-)isotropic data and a network trained on slices of every orientation.
        context_slices: neighbours k on each side; ``0`` is plain per-slice 2D inference.
        overlap: in-plane overlap fraction of neighbouring windows, in ``[0, 1)``, one value or one per axis.
        mode: window blending, ``"constant"`` or ``"gaussian"``.
        sigma_scale: Gaussian sigma as a fraction of the window size, as in MONAI (0.125, nnU-Net's 1/8).
        padding_mode: in-plane padding (MONAI ``PytorchPadMode``) when the window is larger than the slice; the
            slice axis is always replicate-padded.
        cval: fill value for ``"constant"`` padding.
        sw_device: device where windows are built and the network runs (default: the input's device).
        device: device of the output (default: the input's device). With a CPU volume, ``sw_device="cuda"`` runs
            the network on the GPU while volume and output stay in CPU memory.
        output_index: which output to use when the network returns several: position in a list / tuple (0 is
            U2Net's fused output) or key of a dict (an int picks by position in the dict's order).
        flip_tta: test-time augmentation with in-plane flips (none, H, W, both: 4 network passes per window), averaged
            in probability space; requires ``tta_activation``.
        flip_axes: the spatial axes of the input (0, 1, 2 as for ``slice_axis``) that ``flip_tta`` may mirror;
            ``None`` (default) mirrors both in-plane axes. Restrict it when labels have a direction along an axis:
            the hippocampus labels ``anterior`` / ``posterior`` swap meaning under an anterior-posterior flip (Dice
            0.86 -> 0.14 on the sample), so its bundle mirrors left-right only (axis 0 after RAS reorientation). An
            axis equal to a view's slice axis is ignored for that view.
        tta_activation: ``"softmax"`` (over channels) or ``"sigmoid"``, applied to every window prediction before
            blending; when set, the output holds probabilities instead of logits. ``None`` (default) returns logits,
            like MONAI inferers.
        progress: show a tqdm progress bar over windows.
        amp: run the network under ``torch.autocast`` on ``sw_device``: ``True`` / ``"auto"`` picks bfloat16 on a
            CPU with native bf16 (AVX-512 BF16, AMX) and on bf16-capable GPUs, float16 on other GPUs, nothing
            elsewhere; ``"bfloat16"`` / ``"float16"`` force a dtype; ``False`` (default) leaves precision to the
            caller (an enclosing autocast, e.g. MONAI's evaluator ``amp=True`` on CUDA, still applies). Windows are
            gathered and blended in float32 either way (see :mod:`monai_unet2.inferers.precision`).
        channels_last: give the network window batches in ``channels_last`` memory format (NHWC), which oneDNN and
            cuDNN convolutions run faster; the windows are built directly in that layout.
        size_divisible_by: round window sizes taken from the slice (``None`` / 0 / -1 entries of ``roi_size``) up to a
            multiple of this (one value or one per in-plane axis), padding with ``padding_mode``. Set it to the
            network's total stride (16 for a UNet of depth 4) for whole-slice inference: a slice whose sizes
            pooling cannot halve evenly loses rows and columns inside the network (on the hippocampus validation
            split, whole 36×52 slices score Dice 0.10 lower than the same slices padded to 48×64).
        min_roi_size: lower bound of window sizes taken from the slice, e.g. the training window: with
            ``roi_size=None`` a slice smaller than it is padded to it, as in training, and a larger slice is one
            window. (On the hippocampus split, rounding alone gave some slices a window narrower than the
            training window, and Dice 0.017 lower.)
        window_batching: ``"runs"``: one strided copy and one blend per run of consecutive slices (fastest on CPUs,
            also when runs are one window long); ``"indexed"``: one advanced-indexing gather and one
            ``index_put_`` per batch (fewest kernel launches); ``"auto"`` (default): ``"indexed"`` on accelerators
            when a batch holds more than two runs (2D images, volumes thinner than ``sw_batch_size``), else
            ``"runs"``. All give the same result to float rounding.
    """

    def __init__(
        self,
        roi_size: Sequence[int | None] | int | None = None,
        sw_batch_size: int = 8,
        slice_axis: int | Sequence[int] = 2,
        context_slices: int = 0,
        overlap: Sequence[float] | float = 0.25,
        mode: BlendMode | str = BlendMode.CONSTANT,
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: PytorchPadMode | str = PytorchPadMode.CONSTANT,
        cval: float = 0.0,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        output_index: int | str = 0,
        flip_tta: bool = False,
        flip_axes: Sequence[int] | None = None,
        tta_activation: str | None = None,
        progress: bool = False,
        amp: bool | str | torch.dtype | None = False,
        channels_last: bool = False,
        window_batching: str = "auto",
        size_divisible_by: Sequence[int] | int = 1,
        min_roi_size: Sequence[int] | int | None = None,
    ) -> None:
        super().__init__()
        if roi_size is not None and not isinstance(roi_size, int) and len(roi_size) != 2:
            raise ValueError(f"roi_size must be 2D (an in-plane window), got {roi_size}.")
        self.slice_axes = tuple(int(axis) for axis in ensure_tuple(slice_axis))
        if not self.slice_axes or any(axis not in (0, 1, 2) for axis in self.slice_axes):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (H, W, D) or a sequence of them, got {slice_axis}.")
        if int(context_slices) < 0:
            raise ValueError(f"context_slices must be >= 0, got {context_slices}.")
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        if tta_activation is not None and tta_activation not in _ACTIVATIONS:
            raise ValueError(f"tta_activation must be one of {_ACTIVATIONS} or None, got {tta_activation!r}.")
        if flip_tta and tta_activation is None:
            raise ValueError("flip_tta=True averages probabilities: set tta_activation to 'softmax' or 'sigmoid'.")
        if window_batching not in _BATCHING:
            raise ValueError(f"window_batching must be one of {_BATCHING}, got {window_batching!r}.")
        resolve_amp_dtype(amp, "cpu")  # validates the value
        self.roi_size = roi_size
        self.sw_batch_size = int(sw_batch_size)
        self.slice_axis = slice_axis
        self.context_slices = int(context_slices)
        self.overlap = overlap
        self.mode = look_up_option(mode, BlendMode)
        self.sigma_scale = sigma_scale
        self.padding_mode = look_up_option(padding_mode, PytorchPadMode)
        self.cval = float(cval)
        self.sw_device = sw_device
        self.device = device
        self.output_index = output_index
        self.flip_tta = bool(flip_tta)
        self.flip_axes = None if flip_axes is None else tuple(int(axis) for axis in flip_axes)
        if self.flip_axes is not None and any(axis not in (0, 1, 2) for axis in self.flip_axes):
            raise ValueError(f"flip_axes must be spatial axes 0, 1 or 2, got {flip_axes}.")
        self.tta_activation = tta_activation
        self.progress = progress
        self.amp = amp
        self.channels_last = bool(channels_last)
        self.window_batching = window_batching
        self.size_divisible_by = size_divisible_by
        self.min_roi_size = min_roi_size

    def with_view(self, slice_axis: int, training_window: Sequence[int]) -> SlidingWindowSliceInferer:
        """A copy that slides along ``slice_axis`` with another view's training window, all else unchanged.

        The window replaces this inferer's ``roi_size`` when it is set and its ``min_roi_size`` when that is set
        (whole-slice inference padded to at least the training window), so a model trained on another slice
        orientation is inferred the way its own training validated it. Used by
        :class:`monai_unet2.inferers.MultiViewInferer`.

        Args:
            slice_axis: the view's slice axis, 0, 1 or 2.
            training_window: the view's in-plane training window ``(h, w)``, in the order of the in-plane axes.
        """
        if int(slice_axis) not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}.")
        view = copy.copy(self)
        view.slice_axis = int(slice_axis)
        view.slice_axes = (int(slice_axis),)
        window = [int(size) for size in training_window]
        if self.roi_size is not None:
            view.roi_size = window
        if self.min_roi_size is not None:
            view.min_roi_size = window
        return view

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Infer ``inputs`` slice by slice with the 2D ``network``.

        Args:
            inputs: a volume batch ``(B, C, H, W, D)`` or an image batch ``(B, C, H, W)``; a MetaTensor keeps its
                metadata on the output. Integer inputs are fed to the network as float32.
            network: 2D model taking ``(N, C * (2k+1), h, w)`` and returning ``(N, out, h, w)`` (or a list / tuple /
                dict of such tensors, see ``output_index``).
            args: optional args passed to ``network``.
            kwargs: optional keyword args passed to ``network``.

        Returns:
            ``(B, out, H, W, D)`` (or ``(B, out, H, W)``), float32 unless the network returns float64, on ``device``.
        """
        if inputs.ndim not in (4, 5):
            raise ValueError(f"inputs must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(inputs.shape)}.")
        meta_template = None
        if isinstance(inputs, MetaTensor):
            meta_template = MetaTensor([]).copy_meta_from(inputs, copy_attr=False)
            inputs = inputs.as_tensor()
        device = torch.device(self.device) if self.device is not None else inputs.device
        sw_device = torch.device(self.sw_device) if self.sw_device is not None else inputs.device
        views: tuple[int | None, ...] = self.slice_axes if inputs.ndim == 5 else (None,)
        bar = tqdm(unit="window") if self.progress else None
        output: torch.Tensor | None = None
        for view in views:
            output = self._accumulate_view(inputs, view, network, output, device, sw_device, bar, args, kwargs)
        if bar is not None:
            bar.close()
        assert output is not None
        if len(views) > 1:
            output /= len(views)
        if meta_template is not None:
            output = convert_to_dst_type(output, meta_template, dtype=output.dtype, device=device)[0]
        return output

    def _accumulate_view(
        self,
        inputs: torch.Tensor,
        view: int | None,
        network: Callable[..., Any],
        output: torch.Tensor | None,
        device: torch.device,
        sw_device: torch.device,
        bar: Any,
        args: tuple,
        kwargs: dict,
    ) -> torch.Tensor:
        """Add one view's blended predictions to ``output`` (allocated on first use) and return it."""
        stack = inputs.unsqueeze(2) if view is None else inputs.movedim(view + 2, 2)
        context = 0 if view is None else self.context_slices
        batch_size, channels, num_slices = stack.shape[:3]
        grid = build_plane_window_grid(
            stack.shape[3:],
            self.roi_size,
            self.overlap,
            self.mode,
            self.sigma_scale,
            sw_device,
            self.size_divisible_by,
            self.min_roi_size,
        )
        total = batch_size * num_slices * len(grid)
        if bar is not None:
            bar.total = (bar.total or 0) + total
            bar.refresh()
        in_dtype = stack.dtype if stack.is_floating_point() else torch.float32
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        buffer = torch.empty(
            (min(self.sw_batch_size, total), channels * (2 * context + 1), *grid.window_size),
            dtype=in_dtype,
            device=stack.device,
        ).contiguous(memory_format=layout)
        neighbours = neighbour_indices(num_slices, context, stack.device)
        amp_dtype = resolve_amp_dtype(self.amp, sw_device)
        flips = self._flips(view, inputs.ndim - 2)
        target = None if output is None else self._slice_major(output, view)
        for start in range(0, total, self.sw_batch_size):
            stop = min(start + self.sw_batch_size, total)
            batch = buffer[: stop - start]
            runs = window_runs(start, stop, num_slices, len(grid))
            indexed = self.window_batching == "indexed" or (
                self.window_batching == "auto" and sw_device.type != "cpu" and len(runs) > 2
            )
            if indexed:
                gather_indexed(stack, start, grid, neighbours, batch, self.padding_mode, self.cval)
            else:
                for run in runs:
                    gather_run(stack, run, grid, context, batch, self.padding_mode, self.cval)
            with autocast(amp_dtype, sw_device):
                prediction = self._predict(network, batch.to(sw_device), flips, args, kwargs)
            if target is None:
                out_dtype = torch.promote_types(prediction.dtype, torch.float32)
                target = torch.zeros(
                    (batch_size, prediction.shape[1], *stack.shape[2:]), dtype=out_dtype, device=device
                )
                output = target[:, :, 0] if view is None else target.movedim(2, view + 2)
            prediction = prediction.to(grid.weights.device)
            if indexed:
                blend_indexed(target, prediction, start, grid)
            else:
                for run in runs:
                    blend_run(target, prediction, run, grid)
            if bar is not None:
                bar.update(stop - start)
        assert output is not None
        return output

    @staticmethod
    def _slice_major(output: torch.Tensor, view: int | None) -> torch.Tensor:
        """View of ``output`` as ``(B, out, S, P, Q)`` with the slice axis third."""
        return output.unsqueeze(2) if view is None else output.movedim(view + 2, 2)

    def _flips(self, view: int | None, spatial_dims: int) -> tuple[tuple[int, ...], ...]:
        """Window dims to flip for each TTA pass of one view: every subset of the allowed in-plane axes."""
        if not self.flip_tta:
            return ((),)
        in_plane = [axis for axis in range(spatial_dims) if axis != view]
        allowed = in_plane if self.flip_axes is None else [axis for axis in in_plane if axis in self.flip_axes]
        dims = [in_plane.index(axis) - len(in_plane) for axis in allowed]  # -2 / -1 of the (N, C, h, w) window
        return tuple(tuple(d for bit, d in enumerate(dims) if mask >> bit & 1) for mask in range(2 ** len(dims)))

    def _predict(
        self,
        network: Callable[..., Any],
        batch: torch.Tensor,
        flips: tuple[tuple[int, ...], ...],
        args: tuple,
        kwargs: dict,
    ) -> torch.Tensor:
        """Network prediction ``(N, out, h, w)`` for a window batch, averaged over the TTA ``flips``, with activation."""
        total: torch.Tensor | None = None
        for dims in flips:
            x = batch.flip(dims) if dims else batch
            prediction = select_output(network(x, *args, **kwargs), self.output_index)
            if prediction.ndim != 4 or prediction.shape[0] != batch.shape[0] or prediction.shape[2:] != batch.shape[2:]:
                raise ValueError(
                    f"the network must map {tuple(batch.shape)} windows to (N, out, {batch.shape[2]}, "
                    f"{batch.shape[3]}), got {tuple(prediction.shape)} (is it a 2D network? with "
                    f"{batch.shape[1]} input channels = C * (2 * context_slices + 1)?)."
                )
            prediction = prediction.float() if prediction.dtype != torch.float64 else prediction
            if self.tta_activation == "softmax":
                prediction = torch.softmax(prediction, dim=1)
            elif self.tta_activation == "sigmoid":
                prediction = torch.sigmoid(prediction)
            if dims:
                prediction = prediction.flip(dims)
            total = prediction if total is None else total + prediction
        assert total is not None
        return total / len(flips) if len(flips) > 1 else total
