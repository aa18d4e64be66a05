"""Where runs are tracked and what identifies them: tracking URI, run names, versions, git commit, dataset digest.

These helpers are called from the bundles' ``train.json`` (``"tracking_uri": "$monai_unet2.tracking.
default_tracking_uri(@output_dir)"``) and by :class:`~monai_unet2.tracking.MLflowRun`. None of them talks to a
tracking server.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from monai.utils import path_to_sqlite_uri

__all__ = [
    "HTTP_CLIENT_DEFAULTS",
    "configure_http_client",
    "dataset_digest",
    "default_tracking_uri",
    "git_commit",
    "host_name",
    "package_versions",
    "read_bundle_version",
    "unique_run_name",
]

#: MLflow's own defaults retry a dead server 7 times with exponential back-off (minutes of stalled training) and
#: wait 120 s per request; a training loop wants to learn quickly that the server is gone. MLflow also draws a
#: progress bar for every artifact download or upload (about 30 lines per registered version in a log): off.
HTTP_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def configure_http_client() -> None:
    """Shorten MLflow's HTTP retries and timeout and switch its artifact progress bars off
    (:data:`HTTP_CLIENT_DEFAULTS`), unless the user set them already."""
    for name, value in HTTP_CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def default_tracking_uri(output_dir: str | os.PathLike, create: bool = True) -> str:
    """The tracking URI a bundle run uses when none is given on the command line.

    ``MLFLOW_TRACKING_URI`` wins when set (a shared server); otherwise an embedded SQLite database
    ``<output_dir>/mlflow.db`` with an absolute path (MONAI's ``path_to_sqlite_uri``), so the run lands in the
    bundle's ``eval/`` whatever the working directory is (MLflow 3 refuses the ``./mlruns`` file store); MONAI's
    ``MLFlowHandler`` keeps the artifacts beside it in ``mlruns/``. The folder is created, since SQLite does not
    create it. Also applies :func:`configure_http_client`.

    Args:
        output_dir: the bundle's output directory (``@output_dir``).
        create: create ``output_dir`` if missing (training); inference only reads the registry.
    """
    configure_http_client()
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    directory = Path(output_dir).expanduser().resolve()
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    return path_to_sqlite_uri(directory / "mlflow.db")


def unique_run_name(prefix: str = "run") -> str:
    """A run name no earlier run can have: ``<prefix>_<YYYYmmdd_HHMMSS>_<6 hex>``.

    MONAI's ``MLFlowHandler`` resumes the latest unfinished run of the experiment when ``run_name`` is ``None`` (and
    the unfinished run of the same name otherwise); a run killed without closing would silently absorb the next
    run's metrics. A fresh name per process prevents that.
    """
    return f"{prefix}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"


def host_name() -> str:
    """This machine's name, used with the process id to recognise runs left behind by dead processes."""
    return socket.gethostname()


def package_versions(packages: Sequence[str] = ("monai_unet2", "monai", "torch", "mlflow", "numpy")) -> dict[str, str]:
    """Installed versions of ``packages`` as ``{"version_<name>": version}`` (``"not installed"`` when missing)."""
    versions = {}
    for name in packages:
        try:
            versions[f"version_{name}"] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[f"version_{name}"] = "not installed"
    return versions


def git_commit(path: str | os.PathLike) -> dict[str, str]:
    """``{"git_commit": sha, "git_dirty": "true"|"false"}`` for the git checkout holding ``path``; ``{}`` outside one.

    Args:
        path: a file or folder inside the checkout (the bundle root, or the package folder).
    """
    folder = Path(path).resolve()
    folder = folder if folder.is_dir() else folder.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if not sha:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": sha, "git_dirty": "unknown" if status is None else str(bool(status)).lower()}


def _file_entries(datalist: Iterable[Mapping[str, Any] | str]) -> list[str]:
    entries = []
    for item in datalist:
        values = item.values() if isinstance(item, Mapping) else [item]
        for value in values:
            for candidate in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(candidate, (str, os.PathLike)) and os.path.exists(candidate):
                    size = os.path.getsize(candidate) if os.path.isfile(candidate) else -1
                    entries.append(f"{os.path.basename(os.fspath(candidate))}\t{size}")
    return entries


def dataset_digest(datalists: Mapping[str, Iterable[Mapping[str, Any] | str]]) -> dict[str, str]:
    """A fingerprint of the data a run saw: sha256 over the sorted ``name<TAB>size`` of every file, per split.

    File names and sizes (not contents) keep it fast on large datasets while still catching added, removed or
    replaced cases. Returns ``{"dataset_digest": <sha256 over all splits>, "dataset_<split>_files": count, ...}``.

    Args:
        datalists: ``{"train": [...], "val": [...]}`` with MONAI datalist items (dicts of paths) or plain paths.
    """
    overall = hashlib.sha256()
    params = {}
    for split in sorted(datalists):
        entries = sorted(_file_entries(datalists[split]))
        overall.update(f"[{split}]\n".encode())
        overall.update("\n".join(entries).encode())
        params[f"dataset_{split}_files"] = str(len(entries))
    params["dataset_digest"] = overall.hexdigest()
    return params


def read_bundle_version(bundle_root: str | os.PathLike) -> str:
    """``version`` from ``<bundle_root>/configs/metadata.json``, or ``"unknown"`` when there is none."""
    import json

    path = Path(bundle_root) / "configs" / "metadata.json"
    try:
        return str(json.loads(path.read_text()).get("version", "unknown"))
    except (OSError, ValueError):
        return "unknown"
