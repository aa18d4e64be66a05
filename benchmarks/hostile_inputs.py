"""The hostile-input catalogue: build every case in a temporary folder from committed data, run it through the reading
path the bundles use, and print a table of outcomes.

Each case is one ``Case`` entry in ``CASES`` (``benchmarks/hostile_cases.py``; the files are made by
``benchmarks/hostile_builders.py``): a name, the expected outcome (``processed`` or ``refused``), a builder that writes
the input into a folder and returns what the datalist would hold, the pipeline it goes through, and for processed
cases a check of the result (numbers, or the warning that must name the file). Pipelines are the
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

Exits 1 when any case ends otherwise than expected. Adding a case: append a ``Case`` to ``CASES`` in
``hostile_cases.py``; adding a pipeline (e.g. a bundle run in a subprocess): add a function of (entry, folder) to
``PIPELINES`` here.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_cases import CASES, Case  # noqa: E402  (the cases live next to this script)

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


def _preprocessing(config: Path, bundle_root: Path, drive: bool = False) -> Callable:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config)
    parser["bundle_root"] = str(bundle_root)
    parser["force_modality"] = True  # the CT cases test reading, not the MR bundle's modality guard
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
            "force_modality": True,  # the CT cases test reading, not the MR bundle's modality guard
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
    rerun = lambda other: PIPELINES[case.pipeline](other, folder)  # noqa: E731
    problem = case.check(output, log.getvalue(), rerun) if case.check else None
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
    logging.getLogger("monai_unet2").propagate = False  # warnings go to each case's log, not the console
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
