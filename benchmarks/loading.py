"""Time to load a DICOM series: DicomSeriesReader vs MONAI's PydicomReader vs SimpleITK's ImageSeriesReader.

Series: the committed 20-slice CT (tests/data/dicom/totalseg_ct20/ct, 512x512, JPEG 2000 lossless) and a synthetic
300-slice series written from it with pydicom (slices cycled, ImagePositionPatient / SOPInstanceUID / InstanceNumber
rewritten). Each reader loads each series ``--repeats`` times in one run; the table gives the best time and the
ratio to ours. Writes the table to benchmarks/results/loading.md.

    .venv/bin/python benchmarks/loading.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from monai.transforms import LoadImage
from pydicom.uid import generate_uid

from monai_unet2.data import DicomSeriesReader

ROOT = Path(__file__).resolve().parents[1]
CT20 = ROOT / "tests" / "data" / "dicom" / "totalseg_ct20" / "ct"


def write_long_series(folder: Path, n_slices: int) -> None:
    sources = [pydicom.dcmread(p) for p in sorted(CT20.glob("*.dcm"))]
    top = [float(v) for v in sources[0].ImagePositionPatient]
    series_uid = generate_uid()
    for i in range(n_slices):
        ds = sources[i % len(sources)]
        ds.ImagePositionPatient = [top[0], top[1], top[2] - 2.0 * i]
        ds.SliceLocation = top[2] - 2.0 * i
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = i + 1
        ds.save_as(folder / f"slice_{i:04d}.dcm")


def sitk_load(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def readers() -> dict:
    out = {
        "DicomSeriesReader (ours)": lambda f: LoadImage(reader=DicomSeriesReader(), image_only=True)(str(f)),
        "DicomSeriesReader, 2 threads": lambda f: LoadImage(reader=DicomSeriesReader(num_threads=2), image_only=True)(
            str(f)
        ),
        "MONAI PydicomReader": lambda f: LoadImage(reader="PydicomReader", image_only=True)(str(f)),
        "SimpleITK ImageSeriesReader": sitk_load,
    }
    if importlib.util.find_spec("itk") is not None:
        out["MONAI ITKReader"] = lambda f: LoadImage(reader="ITKReader", image_only=True)(str(f))
    return out


def best_time(load, folder: Path, repeats: int) -> tuple[float, float]:
    times, total = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        array = load(folder)
        times.append(time.perf_counter() - start)
        total = float(np.asarray(array, dtype=np.float64).sum())
    return min(times), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100-slice synthetic series, 1 repeat")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    n_long, repeats = (100, 1) if args.quick else (300, args.repeats)
    logging.getLogger("monai_unet2").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    lines = [
        f"| series | reader | best of {repeats} (s) | time / ours |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        long_folder = Path(tmp)
        write_long_series(long_folder, n_long)
        for name, folder in [("20 slices 512² (J2K)", CT20), (f"{n_long} slices 512² (J2K, synthetic)", long_folder)]:
            results = {label: best_time(load, folder, repeats) for label, load in readers().items()}
            ours, ours_sum = results["DicomSeriesReader (ours)"]
            for label, (seconds, total) in results.items():
                if abs(total - ours_sum) > 1e-6 * abs(ours_sum) + 1:
                    label += " (different voxel sum!)"
                lines.append(f"| {name} | {label} | {seconds:.3f} | {seconds / ours:.2f} |")
    table = "\n".join(lines)
    note = (
        "\n\nSame run, side by side; SimpleITK includes GDCM's file listing and sorting. All readers give the same "
        "voxel sum. Absolute times are noisy on the shared machine: compare ratios.\n"
    )
    print(table + note)
    out = ROOT / "benchmarks" / "results" / "loading.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# DICOM series loading\n\n" + table + note)


if __name__ == "__main__":
    main()
