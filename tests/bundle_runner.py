"""Run ``python -m monai.bundle`` the way users do, for the bundle tests."""

import os
import subprocess
import sys
from pathlib import Path


def run_bundle(
    bundle_root: Path, command: str, cwd: Path, *args: str, config: str | None = None, timeout: int = 600
) -> str:
    """Run ``python -m monai.bundle <command>`` for ``bundle_root`` in ``cwd`` and return its output.

    Args:
        bundle_root: the bundle folder (passed as ``--bundle_root`` with its ``configs/metadata.json``).
        command: ``run``, ``verify_metadata``, ``verify_net_in_out``, ``ckpt_export``, ...
        cwd: working directory, outside the bundle.
        args: further command-line arguments.
        config: a file of the bundle's ``configs/`` folder to pass as ``--config_file``.
        timeout: seconds before the run is killed and the test fails.

    Raises:
        AssertionError: with the tail of the output when the command exits non-zero.
    """
    argv = [sys.executable, "-m", "monai.bundle", command]
    if command != "verify_metadata":
        argv += ["--bundle_root", str(bundle_root), "--meta_file", str(bundle_root / "configs" / "metadata.json")]
    if config:
        argv += ["--config_file", str(bundle_root / "configs" / config)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(argv + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"monai.bundle {command} failed:\n{output[-6000:]}"
    return output
