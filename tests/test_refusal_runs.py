"""How runs end, as users see them: ``python -m monai.bundle run`` (and the project's own commands) in a subprocess,
on copies of committed data with hostile inputs among them.

The last lines a user sees name the file and the problem (a batch: each failed input and why), no traceback reaches
the console (it is in the log file the message points to), the exit status is 1; nothing was written before a
refusal of the whole batch; a resumed run redoes a 0-byte output and nothing else; a bad training case ends the
process with exit 1, not 134; and the project's commands never evaluate their arguments (MONAI's command line does,
see docs/security.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_unet2.data.output_checks import output_problem

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
SAMPLE = BUNDLE / "sample_data"
CASES = sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))


def _run(cwd: Path, *args: str, config: str | list[str] = "inference.json", timeout: int = 600):
    configs = [config] if isinstance(config, str) else config
    config_file = (
        str(BUNDLE / "configs" / configs[0])
        if len(configs) == 1
        else repr([str(BUNDLE / "configs" / name) for name in configs])
    )
    argv = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", str(BUNDLE)]
    argv += ["--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--progress_bar", "False", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr, result.stderr.strip().splitlines()


def _log_file(stderr_lines: list[str]) -> Path:
    match = re.search(r"(?:traceback is|tracebacks are) in (\S+\.log)", "\n".join(stderr_lines))
    assert match, stderr_lines
    return Path(match.group(1).rstrip(";"))


def test_a_batch_with_bad_inputs_writes_the_good_ones_lists_the_bad_ones_and_resumes(tmp_path):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    for case in CASES[:4]:
        shutil.copy(case, inputs / case.name)
    (inputs / "hippocampus_050.nii.gz").write_text("patient list, not an image\n")
    (inputs / "hippocampus_100.nii.gz").write_bytes(CASES[5].read_bytes()[:3000])
    (inputs / "notes.txt").write_text("scanned twice\n")

    status, output, stderr = _run(tmp_path, "--dataset_dir", str(inputs), "--output_dir", str(out))
    assert status == 1
    assert "Traceback" not in output and "Failed to evaluate" not in output
    assert stderr[-3:] == [
        "2 of 6 inputs failed (4 processed); each failed input and why:",
        f"  {inputs / 'hippocampus_050.nii.gz'}: cannot read image (a text file (starting 'patient list, not an image'))",
        stderr[-1],
    ]
    assert stderr[-1].startswith(f"  {inputs / 'hippocampus_100.nii.gz'}: cannot read image (truncated or corrupt gzip")
    assert f"{inputs / 'notes.txt'}: skipped, not an input of this batch (a text file" in output
    assert output.count("input failed, going on with the next one:") == 2
    log = _log_file(stderr).read_text()
    assert log.count("Traceback (most recent call last)") >= 2 and "EOFError" in log
    outputs = {case: out / case.name.replace(".nii.gz", "_seg.nii.gz") for case in CASES[:4]}
    assert all(output_problem(path, case) is None for case, path in outputs.items())

    emptied, kept = outputs[CASES[1]], outputs[CASES[2]]
    emptied.write_bytes(b"")
    kept_time = kept.stat().st_mtime_ns
    (inputs / "hippocampus_050.nii.gz").unlink()
    (inputs / "hippocampus_100.nii.gz").unlink()
    status, output, stderr = _run(tmp_path, "--dataset_dir", str(inputs), "--output_dir", str(out), "--resume", "True")
    assert status == 0, output[-3000:]
    assert f"resume: {emptied} is not a finished output: an empty file (0 bytes); segmenting" in output
    assert "resume: 3 of 4 inputs already have finished outputs" in output
    assert output_problem(emptied, CASES[1]) is None and kept.stat().st_mtime_ns == kept_time


def test_a_batch_refused_before_it_starts_writes_nothing(tmp_path):
    """Colliding names (``x.nii`` and ``x.nii.gz``) and an output folder behind a file are refused in one line,
    before the network is even loaded; ``--stop_on_error`` and ``--debug`` are plain switches."""
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(CASES[0], inputs / "x.nii.gz")
    nib.save(nib.load(CASES[1]), inputs / "x.nii")
    status, output, stderr = _run(tmp_path, "--dataset_dir", str(inputs), "--output_dir", str(out))
    assert status == 1 and "Traceback" not in output
    assert stderr[-1].startswith(f"1 output name conflict(s) in {out}, nothing was run: {inputs / 'x.nii'} and ")
    assert not list(out.glob("*.nii.gz")) and "Restored all variables" not in output

    marker = tmp_path / "marker"
    payload = f"$__import__('pathlib').Path({str(marker)!r}).touch() or {str(tmp_path / 'nowhere')!r}"
    status, output, stderr = _run(tmp_path, "--dataset_dir", payload, "--output_dir", str(out), "--debug", "True")
    assert status == 1 and stderr[-1] == f"input folder {tmp_path / 'nowhere'} does not exist"
    assert marker.exists()  # MONAI's command line evaluated the "$" value: docs/security.md warns about it
    assert output.count("DatalistError: input folder") == 1  # --debug: the traceback once, then the reason
    assert "Restored all variables" not in output


def test_training_with_a_label_on_another_grid_exits_1_with_the_reason(tmp_path):
    dataset = tmp_path / "data"
    for sub in ("imagesTr", "labelsTr"):
        (dataset / sub).mkdir(parents=True)
    for case in CASES[:5]:
        shutil.copy(case, dataset / "imagesTr" / case.name)
        shutil.copy(SAMPLE / "labelsTr" / case.name, dataset / "labelsTr" / case.name)
    moved = dataset / "labelsTr" / CASES[2].name
    label = nib.load(moved)
    affine = label.affine.copy()
    affine[0, 3] += 2.0
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), affine, label.header), moved)
    args = ["--dataset_dir", str(dataset), "--output_dir", str(tmp_path / "eval"), "--ckpt_dir", str(tmp_path / "m")]
    status, output, stderr = _run(tmp_path, *args, "--max_epochs", "1", config="train.json")
    assert status == 1, output[-3000:]  # before: often 134, "terminate called without an active exception"
    assert "terminate called" not in output and "Traceback" not in output
    assert stderr[-1] == (
        f"{moved} (label) and {dataset / 'imagesTr' / CASES[2].name} (image) have different geometry: their affines "
        "place the same voxel up to 2 mm apart (tolerance 0.001 mm)"
    )


def test_the_projects_commands_never_evaluate_their_arguments(tmp_path, monkeypatch):
    """``python -m monai_unet2.tracking`` and ``python -m monai_unet2 plan`` take a ``$`` value literally (MONAI's
    command line would run it); the demo hands MONAI's runner only absolute paths and numbers, which its parser never
    evaluates."""
    from monai_unet2 import demo

    marker = tmp_path / "marker"
    payload = f"$__import__('pathlib').Path({str(marker)!r}).touch() or 'x'"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tracking = [sys.executable, "-m", "monai_unet2.tracking", "export-bundle", payload, payload]
    result = subprocess.run(tracking, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and not marker.exists()

    from monai_unet2.__main__ import main as package_main

    status = package_main(["plan", "--dataset_dir", payload, "--bundle_dir", str(tmp_path / "bundle")])
    assert status != 0 and not marker.exists()

    handed: list[dict] = []

    def record(*configs: str, **overrides: object) -> None:
        handed.append(overrides)
        raise SystemExit(0)  # stop before the bundle runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "_run_bundle", record)
    with pytest.raises(SystemExit):
        demo.main(["--output-dir", payload, "--epochs", "1"])
    (overrides,) = handed
    assert overrides == {"output_dir": str(tmp_path / payload / "evaluation")}
    assert not any(str(value).startswith(("$", "@", "%")) for value in overrides.values())
    assert not marker.exists()
