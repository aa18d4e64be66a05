"""2D / 2.5D sliding-window inference of a 2D network over 3D volumes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import BlendMode, PytorchPadMode, convert_to_dst_type, ensure_tuple, look_up_option, optional_import

from monai_unet2.inferers.slice_windows import (
    PlaneWindowGrid,
    build_plane_window_grid,
    gather_window,
    neighbour_indices,
    select_output,
)

tqdm, _ = optional_import("tqdm", name="tqdm")

__all__ = ["SlidingWindowSliceInferer"]

_FLIPS: tuple[tuple[int, ...], ...] = ((), (-2,), (-1,), (-2, -1))
_ACTIVATIONS = ("softmax", "sigmoid")


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
    the input, the only volume-sized tensor is the output.

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
        tta_activation: ``"softmax"`` (over channels) or ``"sigmoid"``, applied to every window prediction before
            blending; when set, the output holds probabilities instead of logits. ``None`` (default) returns logits,
            like MONAI inferers.
        progress: show a tqdm progress bar over slices.
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
        tta_activation: str | None = None,
        progress: bool = False,
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
        self.tta_activation = tta_activation
        self.progress = progress

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
        total_slices = sum(inputs.shape[0] * (1 if v is None else inputs.shape[v + 2]) for v in views)
        bar = tqdm(total=total_slices, unit="slice") if self.progress else None
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
            stack.shape[3:], self.roi_size, self.overlap, self.mode, self.sigma_scale, sw_device
        )
        neighbours = neighbour_indices(num_slices, context).tolist()
        in_dtype = stack.dtype if stack.is_floating_point() else torch.float32
        windows_per_item = num_slices * len(grid)
        total = batch_size * windows_per_item
        target = None if output is None else self._slice_major(output, view)
        slices_done = 0
        for start in range(0, total, self.sw_batch_size):
            items = range(start, min(start + self.sw_batch_size, total))
            batch = torch.empty(
                (len(items), channels * (2 * context + 1), *grid.window_size), dtype=in_dtype, device=stack.device
            )
            places = []  # (batch item, slice, in-plane window) of every row of the window batch
            for row, item in enumerate(items):
                batch_index, rest = divmod(item, windows_per_item)
                slice_index, window_index = divmod(rest, len(grid))
                rows, cols = grid.source[window_index]
                region = stack[batch_index, :, :, rows, cols]
                gather_window(region, neighbours[slice_index], batch[row], grid.pad, self.padding_mode, self.cval)
                places.append((batch_index, slice_index, window_index))
            prediction = self._predict(network, batch.to(sw_device), args, kwargs)
            if target is None:
                out_shape = (batch_size, prediction.shape[1], *inputs.shape[2:])
                out_dtype = torch.promote_types(prediction.dtype, torch.float32)
                output = torch.zeros(out_shape, dtype=out_dtype, device=device)
                target = self._slice_major(output, view)
            self._blend(target, prediction, grid, places)
            if bar is not None:
                done = (items.stop // len(grid)) - slices_done
                bar.update(done)
                slices_done += done
        assert output is not None
        return output

    @staticmethod
    def _blend(
        target: torch.Tensor, prediction: torch.Tensor, grid: PlaneWindowGrid, places: list[tuple[int, int, int]]
    ) -> None:
        """Add ``prediction * weight`` of every window to its place in ``target`` (in place, no batch-sized
        temporary when the output is on the network's device).

        Args:
            target: ``(B, out, S, P, Q)`` slice-major view of the output.
            prediction: ``(N, out, h, w)`` predictions of the window batch.
            grid: the in-plane window grid (regions and count-normalised weights).
            places: ``(batch item, slice, window)`` of each of the N rows of ``prediction``.
        """
        prediction = prediction.to(grid.weights.device)
        if target.device != prediction.device:
            window_ids = torch.tensor([window for _, _, window in places], device=prediction.device)
            weighted = (prediction * grid.weights[window_ids]).to(target.device)
            for row, (batch_index, slice_index, window) in enumerate(places):
                window_rows, window_cols = grid.target[window]
                region = (batch_index, slice(None), slice_index, *grid.source[window])
                target[region] += weighted[row, :, window_rows, window_cols]
            return
        for row, (batch_index, slice_index, window) in enumerate(places):
            window_rows, window_cols = grid.target[window]
            region = (batch_index, slice(None), slice_index, *grid.source[window])
            target[region].addcmul_(
                prediction[row, :, window_rows, window_cols], grid.weights[window, :, window_rows, window_cols]
            )

    @staticmethod
    def _slice_major(output: torch.Tensor, view: int | None) -> torch.Tensor:
        """View of ``output`` as ``(B, out, S, P, Q)`` with the slice axis third."""
        return output.unsqueeze(2) if view is None else output.movedim(view + 2, 2)

    def _predict(self, network: Callable[..., Any], batch: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        """Network prediction ``(N, out, h, w)`` for a window batch, with activation and flip TTA when set."""
        flips = _FLIPS if self.flip_tta else ((),)
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
