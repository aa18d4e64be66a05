"""Hostile 2D images (the DRIVE bundle's input side), made from the pixels of a committed CT slice: read at their real
depth, or refused in one line naming the file and the problem."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.transforms import EnsureChannelFirstd, LoadImaged
from PIL import Image

from monai_unet2.data import VolumeFileError
from monai_unet2.data.images2d import Image2DReader
from monai_unet2.transforms import CheckVolumed, SafeLoadImaged

CT_SLICE = Path(__file__).resolve().parent / "data" / "dicom" / "dcmqi_ct3slice" / "ct" / "01.dcm"
DRIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "drive" / "training"


@pytest.fixture(scope="module")
def ct16() -> np.ndarray:
    """A real 512 x 512 CT slice as 16-bit unsigned greyscale (stored values + 2000, 0..4405)."""
    return (pydicom.dcmread(CT_SLICE).pixel_array.astype(np.int32) + 2000).astype(np.uint16)


@pytest.fixture(scope="module")
def rgb(ct16) -> np.ndarray:
    """An 8-bit RGB image from the same slice: three windows of it as red, green and blue."""
    windows = [(ct16.astype(np.float64) - low) / width for low, width in ((900, 400), (1000, 1500), (2000, 2400))]
    return np.stack([np.clip(w * 255, 0, 255) for w in windows], axis=-1).astype(np.uint8)


def drive_loader(**kwargs) -> SafeLoadImaged:
    """The loader proposed for the DRIVE bundle: SafeLoadImaged with an Image2DReader giving three channels."""
    return SafeLoadImaged("image", reader=Image2DReader(channels=3, **kwargs), image_only=True)


def refusal(path: Path) -> str:
    with pytest.raises(VolumeFileError) as caught:
        drive_loader()({"image": str(path)})
    return str(caught.value)


def test_16_bit_greyscale_keeps_its_depth_in_three_channels(tmp_path, ct16):
    path = tmp_path / "ct16.png"
    Image.fromarray(ct16).save(path)
    assert Image.open(path).mode == "I;16"
    old = LoadImaged("image", reader="PILReader", converter=lambda image: image.convert("RGB"))({"image": str(path)})
    saturated = float((old["image"] == 255).all(dim=-1).float().mean())
    assert saturated == pytest.approx(float((ct16 >= 255).mean())) and saturated > 0.75  # the configs' converter
    image = drive_loader()({"image": str(path)})["image"]
    assert tuple(image.shape) == (512, 512, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel].numpy(), ct16.T.astype(np.float32))
    assert float(image.max()) == float(ct16.max()) > 4000


def test_colour_palette_alpha_and_greyscale_become_correct_rgb(tmp_path, rgb, ct16):
    reference = rgb.transpose(1, 0, 2).astype(np.float32)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(drive_loader()({"image": str(tmp_path / "rgb.png")})["image"].numpy(), reference)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(drive_loader()({"image": str(tmp_path / "rgba.png")})["image"].numpy(), reference)
    palette = Image.fromarray(rgb).quantize(colors=64)
    palette.save(tmp_path / "palette.png")
    expected = np.asarray(palette.convert("RGB")).transpose(1, 0, 2).astype(np.float32)
    loaded = drive_loader()({"image": str(tmp_path / "palette.png")})["image"].numpy()
    np.testing.assert_array_equal(loaded, expected)  # palette colours, not palette indices
    grey = (ct16 // 18).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    loaded = drive_loader()({"image": str(tmp_path / "grey.png")})["image"].numpy()
    np.testing.assert_array_equal(loaded, np.repeat(grey.T[..., None], 3, axis=-1).astype(np.float32))


def test_multi_frame_tiff_is_refused_naming_the_frames(tmp_path, rgb):
    path = tmp_path / "stack.tif"
    frames = [Image.fromarray(np.roll(rgb, shift, axis=0)) for shift in (0, 5, 10)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert refusal(path) == (
        f"{path}: a TIFF file with 3 frames (pages); reading only the first would drop the others: save each frame "
        "as its own file"
    )


def test_truncated_png_among_good_ones_is_named_as_truncated(tmp_path, rgb):
    for index in range(3):
        Image.fromarray(np.roll(rgb, index, axis=1)).save(tmp_path / f"{index}.png")
    victim = tmp_path / "1.png"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    load = drive_loader()
    assert load({"image": str(tmp_path / "0.png")})["image"].shape == (512, 512, 3)
    with pytest.raises(VolumeFileError) as caught:
        load({"image": str(victim)})
    assert str(caught.value).startswith(f"{victim}: truncated or corrupt image data (image file is truncated")
    assert load({"image": str(tmp_path / "2.png")})["image"].shape == (512, 512, 3)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR chunk declaring ``width`` x ``height`` 8-bit grey, and a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 50_000, 50_000)
    assert bomb.stat().st_size < 200
    assert refusal(bomb) == (
        f"{bomb}: image declares 2,500,000,000 pixels (a decompression bomb, or far too large): refused before decoding"
    )
    large = _png_header_only(tmp_path / "large.png", 12_000, 10_000)  # below PIL's error, above its warning
    assert refusal(large) == (
        f"{large}: image declares 120,000,000 pixels (a decompression bomb, or far too large): refused before decoding"
    )
    wide = _png_header_only(tmp_path / "wide.png", 4000, 3000)
    with pytest.raises(VolumeFileError) as caught:
        drive_loader(max_pixels=10_000_000)({"image": str(wide)})
    assert str(caught.value).startswith(f"{wide}: image declares 4000 x 3000 = 12,000,000 pixels, more than max_pixels")


def test_image_too_small_for_the_network_is_refused(tmp_path, rgb):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(rgb[200:201, 300:301]).save(tiny)
    data = EnsureChannelFirstd("image")(drive_loader()({"image": str(tiny)}))
    assert tuple(data["image"].shape) == (3, 1, 1)
    check = CheckVolumed("image", label_key=None, expected_spatial_dims=2, expected_channels=3, min_spatial_size=32)
    with pytest.raises(VolumeFileError) as caught:
        check(data)
    assert str(caught.value) == (
        f"{tiny}: too small to segment: spatial size 1 x 1, the network needs at least 32 x 32 (min_spatial_size)"
    )
    Image.fromarray(rgb[:32, :40]).save(tmp_path / "small_enough.png")
    data = EnsureChannelFirstd("image")(drive_loader()({"image": str(tmp_path / "small_enough.png")}))
    assert tuple(check(data)["image"].shape) == (3, 40, 32)


def test_damaged_png_header_and_truncated_jpeg_are_named(tmp_path, rgb):
    damaged = tmp_path / "damaged.png"
    Image.fromarray(rgb).save(damaged)
    payload = bytearray(damaged.read_bytes())
    payload[29] ^= 0xFF  # inside IHDR: its CRC no longer matches
    damaged.write_bytes(bytes(payload))
    assert refusal(damaged).startswith(
        f"{damaged}: cannot read image (damaged image header, or an image variant PIL does not read"
    )
    cut = tmp_path / "cut.jpg"
    Image.fromarray(rgb).save(cut, format="JPEG")
    cut.write_bytes(cut.read_bytes()[:500])
    assert refusal(cut) == f"{cut}: cannot read image (truncated image data: OSError: Truncated File Read)"


def test_reader_arguments_with_a_reader_instance_are_an_error():
    with pytest.raises(ValueError, match=r"reader arguments \['channels'\] given with a reader instance"):
        SafeLoadImaged("image", reader=Image2DReader(), channels=3)


def test_content_decides_not_the_suffix(tmp_path, rgb):
    jpeg_named_png = tmp_path / "photo.png"
    Image.fromarray(rgb).save(jpeg_named_png, format="JPEG", quality=95)
    image = drive_loader()({"image": str(jpeg_named_png)})["image"]
    assert image.meta["format"] == "JPEG" and tuple(image.shape) == (512, 512, 3)
    assert float(np.abs(image.numpy() - rgb.transpose(1, 0, 2)).mean()) < 3  # JPEG loss only
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert refusal(text) == f"{text}: cannot read image (a text file (starting 'not an image'))"


@pytest.mark.skipif(not DRIVE.is_dir(), reason="DRIVE not present at ../shared/data/drive")
def test_proposed_drive_loaders_give_the_current_arrays_on_drive():
    """The loaders proposed for the DRIVE configs read the real DRIVE files (RGB TIFF, greyscale GIF label and mask)
    into exactly the arrays the current PILReader loaders give, so training and inference are unchanged on them."""
    from monai.transforms import Compose

    from monai_unet2.data import paired_datalist

    keys = ["image", "label", "mask"]
    current = Compose([LoadImaged(keys, reader="PILReader"), EnsureChannelFirstd(keys)])
    current_inference = LoadImaged("image", reader="PILReader", converter=lambda image: image.convert("RGB"))
    proposed = Compose(
        [
            SafeLoadImaged("image", reader=Image2DReader(channels=3)),
            SafeLoadImaged(["label", "mask"], reader=Image2DReader(channels=1)),
            EnsureChannelFirstd(keys),
            CheckVolumed(
                keys,
                label_key="label",
                expected_labels=[0, 255],
                expected_spatial_dims=2,
                expected_channels=[3, 1, 1],
                min_spatial_size=32,
            ),
        ]
    )
    for case in paired_datalist(DRIVE / "images", DRIVE / "1st_manual", DRIVE / "mask")[:3]:
        before, after = current(dict(case)), proposed(dict(case))
        for key in keys:
            assert before[key].shape == after[key].shape
            assert np.array_equal(before[key].numpy(), after[key].numpy())
        inference = current_inference({"image": case["image"]})["image"].numpy()
        assert np.array_equal(np.moveaxis(inference, -1, 0), after["image"].numpy())
