"""Intensity normalisation with one scheme per input channel, as a dataset plan decides it.

nnU-Net normalises each channel by its modality: CT channels are clipped to the 0.5 / 99.5 percentiles of the
foreground intensities of the whole training set and z-scored with the foreground mean and standard deviation (one
fixed mapping for every volume, since Hounsfield units are absolute), other channels (MR, ...) are z-scored per
volume, optionally over the non-zero voxels only. MONAI's ``NormalizeIntensityd`` covers the per-volume z-score for
all channels at once, and ``ScaleIntensityRanged`` / ``ClipIntensityPercentilesd`` clip with one range (or per-volume
percentiles) for all channels; nothing applies a different scheme, or different fixed bounds, to each channel of one
image (a CT + PET pair, a CT with a derived map). :class:`ChannelNormalize` does, with MONAI's
``NormalizeIntensity`` for the z-score channels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensity, Transform

__all__ = ["CHANNEL_SCHEMES", "ChannelNormalize", "ChannelNormalizeD", "ChannelNormalizeDict", "ChannelNormalized"]

#: scheme name -> its required arguments
CHANNEL_SCHEMES: dict[str, tuple[str, ...]] = {
    "ct": ("lower", "upper", "mean", "std"),
    "zscore": (),
    "none": (),
}
_OPTIONAL = {"zscore": ("nonzero",)}


def _checked(spec: Mapping[str, Any], channel: int) -> dict[str, Any]:
    name = spec.get("name")
    if name not in CHANNEL_SCHEMES:
        raise ValueError(f"channel {channel}: normalisation {name!r} is not one of {sorted(CHANNEL_SCHEMES)}")
    required, optional = CHANNEL_SCHEMES[name], _OPTIONAL.get(name, ())
    missing = [key for key in required if key not in spec]
    unknown = sorted(set(spec) - {"name", *required, *optional})
    if missing or unknown:
        raise ValueError(
            f"channel {channel}: normalisation {name!r} takes {list(required + optional)}; "
            f"missing {missing}, unknown {unknown}"
        )
    checked = dict(spec)
    if name == "ct":
        for key in required:
            checked[key] = float(spec[key])
        if checked["lower"] > checked["upper"]:
            raise ValueError(f"channel {channel}: ct lower {checked['lower']} is above upper {checked['upper']}")
    return checked


class ChannelNormalize(Transform):
    """Normalise each channel of a channel-first image with its own scheme.

    Schemes (``name`` and arguments):

    - ``{"name": "ct", "lower": l, "upper": u, "mean": m, "std": s}``: clip to ``[l, u]``, then ``(x - m) / s``
      (nnU-Net's ``CTNormalization``, with statistics of the training set's foreground);
    - ``{"name": "zscore", "nonzero": false}``: subtract this volume's mean and divide by its standard deviation
      (over the non-zero voxels only with ``nonzero``, which leave the zeros at 0), MONAI's ``NormalizeIntensity``;
    - ``{"name": "none"}``: unchanged.

    The result is float32 (a ``MetaTensor`` keeps its metadata); the transform changes no geometry, so ``Invertd``
    is unaffected.

    Args:
        channels: one scheme per channel, in channel order.

    Raises:
        ValueError: an unknown scheme or arguments; at call time, an image with another number of channels.
    """

    def __init__(self, channels: Sequence[Mapping[str, Any]]) -> None:
        if not channels:
            raise ValueError("ChannelNormalize needs one scheme per channel, got none")
        self.channels = [_checked(spec, index) for index, spec in enumerate(channels)]
        self._zscore = {
            index: NormalizeIntensity(nonzero=bool(spec.get("nonzero", False)))
            for index, spec in enumerate(self.channels)
            if spec["name"] == "zscore"
        }

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[0] != len(self.channels):
            name = getattr(img, "meta", {}).get("filename_or_obj", "image")
            raise ValueError(f"{name}: {img.shape[0]} channel(s), but the normalisation has {len(self.channels)}")
        result = img.to(torch.float32, copy=True)
        for index, spec in enumerate(self.channels):
            if spec["name"] == "ct":
                clipped = result[index].clamp(spec["lower"], spec["upper"])
                result[index] = (clipped - spec["mean"]) / max(spec["std"], 1e-8)
            elif spec["name"] == "zscore":
                result[index] = self._zscore[index](result[index : index + 1])[0]
        return result


class ChannelNormalized(MapTransform):
    """Dictionary version of :class:`ChannelNormalize`.

    Args:
        keys: the image keys.
        channels: one scheme per channel (see :class:`ChannelNormalize`).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self, keys: KeysCollection, channels: Sequence[Mapping[str, Any]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize = ChannelNormalize(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d


ChannelNormalizeD = ChannelNormalizeDict = ChannelNormalized
