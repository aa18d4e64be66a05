"""Files on disk: atomic writes, output folders, and the one scanner of DICOM folders.

Every output (segmentations, checkpoints) is written to a hidden temporary file in the target folder and renamed
into place (:func:`write_atomically`), so an interrupted run never leaves a truncated file under a final name. Python
and MONAI have no such helper: ``SaveImaged`` and ``torch.save`` write straight to the final name.

:func:`dicom_files` is the one place that decides which files of a folder are DICOM files, for the series reader,
the memory guard, the DICOM SEG writer and the inference datalist alike. It uses ``pydicom.misc.is_dicom``.

This module imports no reader or writer, so handlers can use it without pulling in the formats.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.misc import is_dicom

__all__ = ["OutputWriteError", "dicom_files", "ensure_output_dir", "write_atomically"]

logger = logging.getLogger(__name__)


class OutputWriteError(OSError):
    """An output file could not be written; the message names the path and why (not writable, disk full...)."""


def dicom_files(folder: str | os.PathLike, log_ignored: bool = True) -> Iterator[str]:
    """The DICOM files of ``folder``, sorted by name: regular files with a ``.dcm`` suffix or the DICOM preamble.

    Hidden files (``.*``, including macOS ``._*`` forks) and ``DICOMDIR`` are left out; so are other files without
    the preamble, with an INFO log line. Sub-folders are not entered. A generator, so that a caller that only asks
    whether a folder holds DICOM (``next``/``any``) stops at the first one.

    Args:
        folder: the folder to scan; it must exist (``os.scandir`` raises otherwise).
        log_ignored: log the files left out for lacking the preamble; callers that scan a folder before the reader
            does (the memory guard, datalists) pass ``False`` so that each is named once.
    """
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith(".") or entry.name.upper() == "DICOMDIR":
            continue
        if entry.name.lower().endswith(".dcm") or is_dicom(entry.path):
            yield entry.path
        elif log_ignored:
            logger.info("DICOM folder %s: ignoring %s (not a DICOM file)", os.fspath(folder), entry.name)


def _compound_suffix(name: str) -> str:
    return ".nii.gz" if name.lower().endswith(".nii.gz") else os.path.splitext(name)[1]


def _describe_failure(path: str, err: BaseException) -> str:
    reason = getattr(err, "errno", None)
    if reason in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: no space left on the device (or quota exceeded): {err}"
    if reason in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: the folder is not writable: {err}"
    if reason in (errno.ENOTDIR, errno.ENOENT, errno.EEXIST):
        return f"cannot write {path}: the output folder does not exist or a parent of it is a file: {err}"
    return f"cannot write {path}: {type(err).__name__}: {err}"


def ensure_output_dir(output_dir: str | os.PathLike) -> str:
    """Create ``output_dir`` (and parents) if needed; :class:`OutputWriteError` naming it when that fails.

    Args:
        output_dir: the folder outputs go to.

    Returns:
        ``output_dir`` as a string.
    """
    folder = os.fspath(output_dir)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OutputWriteError(f"cannot create output folder {folder}: {_describe_failure(folder, err)}") from err
    if not os.path.isdir(folder):
        raise OutputWriteError(f"output folder {folder} exists but is not a folder")
    return folder


def _fsync(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return  # not supported on every platform; the file itself is synced
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, write: Callable[[str], Any], fsync: bool = True) -> str:
    """Run ``write(temporary_path)`` then rename the result to ``path``: readers see the old file or the whole
    new one, never a partial file.

    The temporary file is hidden (``.<name>.tmp-<random><suffix>``, keeping the suffix, e.g. ``.nii.gz``, that
    writers use to pick a format) and lies in the same folder, so ``os.replace`` is an atomic rename. On any error it
    is removed and an :class:`OutputWriteError` naming ``path`` and the cause is raised (``KeyboardInterrupt`` is
    re-raised as is, after the clean-up). A killed process (SIGKILL) can leave a hidden ``.tmp-`` file behind,
    never a file under the final name.

    Args:
        path: the final file name.
        write: writes the whole file at the path it is given.
        fsync: flush the file (and best effort, its folder) to disk before the rename, so a power loss right after
            cannot leave an empty file under the final name.

    Returns:
        ``path``.
    """
    final = os.fspath(path)
    folder, name = os.path.split(final)
    suffix = _compound_suffix(name)
    temporary = os.path.join(folder, f".{name[: len(name) - len(suffix)]}.tmp-{uuid.uuid4().hex[:12]}{suffix}")
    try:
        write(temporary)
        if not os.path.isfile(temporary):
            raise OutputWriteError(f"cannot write {final}: the writer produced no file")
        if fsync:
            _fsync(temporary)
        os.replace(temporary, final)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(err, OutputWriteError) or not isinstance(err, Exception):
            raise
        raise OutputWriteError(_describe_failure(final, err)) from err
    if fsync:
        _fsync(folder or ".", directory=True)
    return final
