"""The hostile-input catalogue: build every case in a temporary folder from committed data, run it through the reading
path the bundles use, and print a table of outcomes.

Each case is one :class:`Case` entry in ``CASES``: a name, the expected outcome (``processed`` or ``refused``), a
builder that writes the input into a folder and returns what the datalist would hold, the pipeline it goes through,
and for processed cases a check of the result (numbers, or the warning that must name the file). Pipelines are the
bundles' own ``preprocessing`` (read from their configs with MONAI's ``ConfigParser``), so a case sees exactly the
transforms a bundle run chains; ``hippocampus-run`` runs the whole inference config in this process.

Outcomes:

- ``processed``: read without error, and the check (if any) found the result right;
- ``refused``: an error whose message is one line naming the input;
- ``crashed``: an error that does not name the input on one line;
- ``silently-wrong``: read without error, but the result is wrong (or it should have been refused).

The DRIVE configs still load with ``LoadImaged`` + ``PILReader`` + an RGB converter; until they take the proposed
loader and check (``DRIVE_LOADER``, ``DRIVE_CHECK`` below), they are substituted here, and a loader without
``target_spacing`` gets its ``Spacingd``'s ``pixdim``, so that the catalogue runs the reading path as proposed.

    .venv/bin/python benchmarks/hostile_inputs.py [--only SUBSTRING] [--messages]

Exits 1 when any case ends otherwise than expected. Adding a case: append a ``Case`` to ``CASES`` (builders and
checks are small functions of a folder / of the loaded data; see the helpers below).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_builders import (  # noqa: E402  (the builders live next to this script)
    CT3,
    CT20,
    build_dicom,
    build_enhanced,
    build_nifti,
    build_png,
    copy_case,
    write_bytes,
)

HIPPOCAMPUS = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
DRIVE = ROOT / "bundles" / "drive_vessel_u2net_segmentation"
DRIVE_LOADER = {
    "_target_": "monai_unet2.transforms.SafeLoadImaged",
    "keys": "image",
    "image_only": True,
    "reader": {"_target_": "monai_unet2.data.Image2DReader", "channels": 3},
}
DRIVE_CHECK = {
    "_target_": "monai_unet2.transforms.CheckVolumed",
    "keys": "image",
    "label_key": None,
    "expected_spatial_dims": 2,
    "expected_channels": 3,
    "min_spatial_size": 32,
}


@dataclass
class Case:
    """One hostile input.

    Attributes:
        name: what it is, e.g. ``"NIfTI: complex voxels"``.
        expected: ``"processed"`` or ``"refused"``.
        build: writes the input into the given folder and returns the datalist entry (a path, or a dict of paths).
        pipeline: a key of :data:`PIPELINES`.
        check: for processed cases: ``check(output, log_text)`` returns ``None`` when the result is right, else what
            is wrong.
        skip: a reason not to run the case here (e.g. it needs a non-root user), or ``None``.
    """

    name: str
    expected: str
    build: Callable[[Path], Any]
    pipeline: str = "hippocampus"
    check: Callable[[Any, str], str | None] | None = None
    skip: str | None = None


def _preprocessing(config: Path, bundle_root: Path, drive: bool = False) -> Callable:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config)
    parser["bundle_root"] = str(bundle_root)
    transforms = parser["preprocessing"]["transforms"]
    if drive and transforms[0]["_target_"] == "LoadImaged":
        transforms[0] = DRIVE_LOADER
        transforms.insert(2, DRIVE_CHECK)
    spacing = [t["pixdim"] for t in transforms if t["_target_"] == "Spacingd"]
    if spacing and "target_spacing" not in transforms[0]:  # the proposed hippocampus change, until it is wired
        transforms[0]["target_spacing"] = spacing[0]
    return parser.get_parsed_content("preprocessing", instantiate=True)


def _run_inference(entry: Any, folder: Path) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(HIPPOCAMPUS / "configs" / "inference.json")
    inputs = Path(entry).parent
    parser.update(
        {
            "bundle_root": str(HIPPOCAMPUS),
            "dataset_dir": str(inputs),
            "output_dir": str(folder / "out"),
            "progress_bar": False,
        }
    )
    logging.disable(logging.CRITICAL)  # the evaluator logs every exception with its traceback
    try:
        parser.get_parsed_content("evaluator").run()
    finally:
        logging.disable(logging.NOTSET)
    return sorted((folder / "out").iterdir())


PIPELINES: dict[str, Callable[[Any, Path], Any]] = {
    "hippocampus": lambda entry, folder: _preprocessing(HIPPOCAMPUS / "configs" / "inference.json", HIPPOCAMPUS)(
        {"image": str(entry)}
    ),
    "hippocampus-evaluate": lambda entry, folder: _preprocessing(
        HIPPOCAMPUS / "configs" / "evaluate.json", HIPPOCAMPUS
    )(entry),
    "drive": lambda entry, folder: _preprocessing(DRIVE / "configs" / "inference.json", DRIVE, drive=True)(
        {"image": str(entry)}
    ),
    "hippocampus-run": _run_inference,
}


def _shape(expected: tuple) -> Callable[[Any, str], str | None]:
    return lambda out, log: None if tuple(out["image"].shape) == expected else f"shape {tuple(out['image'].shape)}"


def _all(*checks: Callable[[Any, str], str | None]) -> Callable[[Any, str], str | None]:
    return lambda out, log: next((problem for check in checks if (problem := check(out, log))), None)


def _not_logged(text: str) -> Callable[[Any, str], str | None]:
    return lambda out, log: f"logged {text!r}" if text in log else None


def _not_saturated(out: Any, log: str) -> str | None:
    """At most half the pixels share one value (PIL's RGB conversion of the 16-bit CT slice saturates 79 %)."""
    _, counts = out["image"][0].unique(return_counts=True)
    share = float(counts.max()) / out["image"][0].numel()
    return None if share < 0.5 else f"{share:.1%} of the pixels have one value (saturated)"


def _warned(text: str) -> Callable[[Any, str], str | None]:
    return lambda out, log: None if text in log else f"no warning containing {text!r}"


def _nifti_outputs(shape: tuple) -> Callable[[Any, str], str | None]:
    def check(outputs: Any, log: str) -> str | None:
        import nibabel as nib

        found = [nib.load(path).shape for path in outputs if str(path).endswith(".nii.gz")]
        return None if found == [shape] else f"outputs {found}, expected one of shape {shape}"

    return check


def _same_as(reference: Callable[[], Any]) -> Callable[[Any, str], str | None]:
    def check(out: Any, log: str) -> str | None:
        import torch

        expected = reference()
        same = out["image"].shape == expected.shape and torch.allclose(out["image"], expected)
        return None if same else "voxels differ from the untouched input read the same way"

    return check


def _reference_ct20() -> Any:
    return PIPELINES["hippocampus"](CT20, Path("."))["image"]


CASES: list[Case] = [
    # content versus name
    Case(
        "NIfTI read by content: no DICOM reader tried",
        "processed",
        lambda d: copy_case(d),
        check=_shape((1, 36, 52, 38)),
    ),
    Case("text file named .nii.gz", "refused", lambda d: write_bytes(d / "notes.nii.gz", b"patients 1-20\n")),
    Case("gzip NIfTI named .nii", "refused", lambda d: copy_case(d, "compressed.nii")),
    Case("uncompressed NIfTI named .nii.gz", "refused", lambda d: build_nifti(d, "plain.nii", name="plain.nii.gz")),
    Case("0-byte .nii.gz", "refused", lambda d: write_bytes(d / "empty.nii.gz", b"")),
    Case("folder named like a file", "refused", lambda d: (d / "case.nii.gz").mkdir() or d / "case.nii.gz"),
    Case("PNG named .nii.gz", "refused", lambda d: build_png(d, "photo.png", name="photo.nii.gz")),
    Case("truncated .nii.gz", "refused", lambda d: copy_case(d, truncate=0.5)),
    Case("broken symbolic link", "refused", lambda d: os.symlink(d / "gone.nii.gz", d / "x.nii.gz") or d / "x.nii.gz"),
    Case(
        "permission denied",
        "refused",
        lambda d: copy_case(d, mode=0),
        skip="running as root: permissions do not stop root" if os.geteuid() == 0 else None,
    ),
    # NIfTI header lies and surprises
    Case("NIfTI complex voxels", "refused", lambda d: build_nifti(d, "complex.nii.gz", dtype="complex64")),
    Case("NIfTI RGB voxels", "refused", lambda d: build_nifti(d, "rgb.nii.gz", dtype="rgb")),
    Case("NIfTI zero column in the affine", "refused", lambda d: build_nifti(d, "zero.nii.gz", affine="zero_column")),
    Case("NIfTI NaN in the affine", "refused", lambda d: build_nifti(d, "nan.nii.gz", affine="nan")),
    Case(
        "NIfTI qform and sform 50 mm apart",
        "processed",
        lambda d: build_nifti(d, "qs.nii.gz", affine="qform_sform_50mm"),
        check=_warned("place the same voxel up to 50 mm apart"),
    ),
    Case("NIfTI int8 with huge scl_slope", "refused", lambda d: build_nifti(d, "slope.nii.gz", scaling=(1e37, 0))),
    Case("NIfTI int8 with scl_slope 2", "processed", lambda d: build_nifti(d, "s2.nii.gz", scaling=(2.0, -3.0))),
    Case("NIfTI 4D time series", "refused", lambda d: build_nifti(d, "fmri.nii.gz", frames=5)),
    Case("NIfTI NaN voxels", "refused", lambda d: build_nifti(d, "nan_voxels.nii.gz", nan_voxels=5)),
    Case(
        "NIfTI zero-size axis",
        "refused",
        lambda d: build_nifti(d, "empty_axis.nii.gz", crop=(slice(None), slice(0, 0))),
    ),
    Case("NIfTI shorter than its header", "refused", lambda d: build_nifti(d, "short.nii", cut_bytes=7)),
    Case(
        "NIfTI big-endian",
        "processed",
        lambda d: build_nifti(d, "big.nii.gz", big_endian=True),
        check=_shape((1, 36, 52, 38)),
    ),
    Case("NIfTI-2", "processed", lambda d: build_nifti(d, "two.nii.gz", nifti2=True), check=_shape((1, 36, 52, 38))),
    Case(
        "NIfTI without orientation (codes 0)",
        "processed",
        lambda d: build_nifti(d, "noorient.nii.gz", affine="no_codes"),
        check=_warned("no orientation"),
    ),
    Case("NIfTI 40 mm voxels (135 GB at 1 mm)", "refused", lambda d: build_nifti(d, "coarse.nii.gz", zooms=40.0)),
    Case(
        "single-slice NIfTI, whole inference",
        "processed",
        lambda d: build_nifti(d, "one.nii.gz", crop=(slice(None), slice(None), slice(19, 20))),
        "hippocampus-run",
        _nifti_outputs((36, 52, 1)),
    ),
    Case(
        "label on another grid (2 mm shift)",
        "refused",
        lambda d: {"image": copy_case(d), "label": build_nifti(d, "label.nii.gz", label=True, shift=2.0)},
        "hippocampus-evaluate",
    ),
    # DICOM
    Case("DICOM damaged header in an end slice", "refused", lambda d: build_dicom(d, damage_header=0)),
    Case("DICOM rescale missing in 4 of 20 slices", "refused", lambda d: build_dicom(d, drop_rescale=(3, 4, 5, 6))),
    Case("DICOM RescaleSlope 'abcd'", "refused", lambda d: build_dicom(d, raw={2: ("RescaleSlope", b"abcd")})),
    Case(
        "DICOM identical duplicate file",
        "processed",
        lambda d: build_dicom(d, duplicate=7),
        check=_same_as(_reference_ct20),
    ),
    Case("DICOM two series of equal size", "refused", lambda d: build_dicom(d, CT3, second_series=True)),
    Case("DICOM enhanced multi-frame", "processed", lambda d: build_enhanced(d), check=_same_as(_reference_ct20)),
    Case("DICOM NaN PixelSpacing", "refused", lambda d: build_dicom(d, raw={4: ("PixelSpacing", b"nan\\0.97")})),
    Case("DICOM PixelSpacing missing", "refused", lambda d: build_dicom(d, delete={4: "PixelSpacing"})),
    Case(
        "DICOM non-perpendicular orientation",
        "refused",
        lambda d: build_dicom(d, raw={4: ("ImageOrientationPatient", b"1\\0\\0\\1\\0\\0")}),
    ),
    Case("DICOM missing slice (gap)", "refused", lambda d: build_dicom(d, drop_files=(7,))),
    Case(
        "DICOM unsupported transfer syntax",
        "refused",
        lambda d: build_dicom(d, transfer_syntax="1.2.840.10008.1.2.4.92"),
    ),
    Case("DICOM pixel data shorter than Rows x Columns", "refused", lambda d: build_dicom(d, CT3, short_pixels=1)),
    Case(
        "DICOM single-slice series, whole inference",
        "processed",
        lambda d: build_dicom(d / "in", CT3, keep=(1,)),
        "hippocampus-run",
        _nifti_outputs((512, 512, 1)),
    ),
    # 2D images (DRIVE)
    Case(
        "16-bit greyscale PNG",
        "processed",
        lambda d: build_png(d, "ct16.png", kind="grey16"),
        "drive",
        _all(_shape((3, 512, 512)), _not_saturated),
    ),
    Case("multi-frame TIFF", "refused", lambda d: build_png(d, "stack.tif", kind="multiframe"), "drive"),
    Case("truncated PNG", "refused", lambda d: build_png(d, "cut.png", truncate=0.5), "drive"),
    Case("decompression bomb PNG (50000 x 50000)", "refused", lambda d: build_png(d, "bomb.png", kind="bomb"), "drive"),
    Case("1 x 1 image", "refused", lambda d: build_png(d, "tiny.png", kind="tiny"), "drive"),
    Case(
        "palette PNG",
        "processed",
        lambda d: build_png(d, "palette.png", kind="palette"),
        "drive",
        _shape((3, 512, 512)),
    ),
    Case(
        "JPEG named .png", "processed", lambda d: build_png(d, "photo.png", kind="jpeg"), "drive", _shape((3, 512, 512))
    ),
]


def _reported(error: BaseException) -> BaseException:
    """The error a user is shown once MONAI's wrappers (``RuntimeError: applying transform ...``) are peeled off."""
    while isinstance(error, RuntimeError) and str(error).startswith("applying transform") and error.__cause__:
        error = error.__cause__
    return error


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    """Build and run one case; returns (outcome, detail)."""
    folder.mkdir(parents=True)
    entry = case.build(folder)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    watched = [logging.getLogger(name) for name in ("monai_unet2", "LoadImage")]
    for logger in watched:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = PIPELINES[case.pipeline](entry, folder)
    except Exception as error:  # the outcome is the message
        reported = _reported(error)
        message = str(reported).strip()
        names = [str(v) for v in (entry.values() if isinstance(entry, dict) else [entry])]
        named = "\n" not in message and any(name in message or str(Path(name).parent) in message for name in names)
        return ("refused" if named else "crashed"), f"{type(reported).__name__}: {message}"
    finally:
        for logger in watched:
            logger.removeHandler(handler)
    problem = case.check(output, log.getvalue()) if case.check else None
    if case.expected == "refused" and problem is None:
        problem = "accepted"
    if problem:
        return "silently-wrong", problem
    warned = log.getvalue().strip().splitlines()
    return "processed", warned[-1] if warned else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    parser.add_argument("--messages", action="store_true", help="print each case's message under the table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("monai_unet2").setLevel(logging.WARNING)
    logging.getLogger("LoadImage").setLevel(logging.INFO)  # "<reader>: unable to load ..." lines of trial reading
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows, unexpected = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for index, case in enumerate(c for c in CASES if args.only.lower() in c.name.lower()):
            if case.skip:
                rows.append((case.name, case.expected, "skipped", case.skip))
                continue
            outcome, detail = run_case(case, Path(tmp) / f"case{index:03d}")
            unexpected += outcome != case.expected
            rows.append((case.name, case.expected, outcome, detail.replace(tmp, "<tmp>")))
    width = max(len(r[0]) for r in rows)
    print(f"| {'case':<{width}} | expected  | outcome        |")
    print(f"|{'-' * (width + 2)}|-----------|----------------|")
    for name, expected, outcome, _ in rows:
        print(f"| {name:<{width}} | {expected:<9} | {outcome:<14} |")
    counts = {o: sum(r[2] == o for r in rows) for o in ("processed", "refused", "crashed", "silently-wrong", "skipped")}
    print("\n" + ", ".join(f"{n} {o}" for o, n in counts.items()) + f"; {unexpected} not as expected")
    if args.messages:
        for name, _, outcome, detail in rows:
            print(f"\n[{outcome}] {name}\n    {detail}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
