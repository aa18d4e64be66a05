"""Run ``python -m monai.bundle`` the way users do, for the bundle tests."""

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: DRIVE inference in one pass with the 0.2.0 windows (no flip TTA, overlap 0.25) instead of four flipped passes at
#: overlap 0.5, for the tests whose subject is not the TTA (the shipped path is covered by the pyfunc test).
DRIVE_ONE_PASS = ("--flip_tta", "False", "--inferer#overlap", "0.25")


def config_file_argument(bundle_root: Path, config: str | Sequence[str]) -> str:
    """The ``--config_file`` value for one file of the bundle's ``configs/`` folder, or a list of them merged in
    order (``["train.json", "evaluate.json"]``: evaluate.json overrides train.json, as in MONAI's model zoo)."""
    if isinstance(config, str):
        return str(bundle_root / "configs" / config)
    return repr([str(bundle_root / "configs" / name) for name in config])


def run_bundle(
    bundle_root: Path,
    command: str,
    cwd: Path,
    *args: str,
    config: str | Sequence[str] | None = None,
    timeout: int = 600,
) -> str:
    """Run ``python -m monai.bundle <command>`` for ``bundle_root`` in ``cwd`` and return its output.

    Args:
        bundle_root: the bundle folder (passed as ``--bundle_root`` with its ``configs/metadata.json``).
        command: ``run``, ``verify_metadata``, ``verify_net_in_out``, ``ckpt_export``, ...
        cwd: working directory, outside the bundle.
        args: further command-line arguments.
        config: a file of the bundle's ``configs/`` folder to pass as ``--config_file``, or a list of them.
        timeout: seconds before the run is killed and the test fails.

    Raises:
        AssertionError: with the tail of the output when the command exits non-zero.
    """
    argv = [sys.executable, "-m", "monai.bundle", command]
    if command != "verify_metadata":
        argv += ["--bundle_root", str(bundle_root), "--meta_file", str(bundle_root / "configs" / "metadata.json")]
    if config:
        argv += ["--config_file", config_file_argument(bundle_root, config)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(argv + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"monai.bundle {command} failed:\n{output[-6000:]}"
    return output


def string_leaves(config):
    """Every string in a JSON config (where ``@id`` references live)."""
    if isinstance(config, str):
        yield config
    elif isinstance(config, dict):
        for value in config.values():
            yield from string_leaves(value)
    elif isinstance(config, list):
        for value in config:
            yield from string_leaves(value)
