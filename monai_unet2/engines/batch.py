"""The inputs of a batch (inference over a folder), checked before the first case runs.

What used to go wrong only after hours of work, or silently: an output folder that cannot be written was reported
after the first case's inference; two inputs with the same name without suffix (``x.nii`` and ``x.nii.gz``, a DICOM
folder ``x`` and ``x.nii.gz``, ``a.png`` and ``a.tif``, two links to one file) wrote one output, the second
replacing the first; a symbolic link in the input folder to a file elsewhere (``/etc/...``) was read; files that are
no input were left out without a word; and ``--resume True`` counted a 0-byte output as done. :func:`batch_datalist`
runs these checks on the datalist of an inference config, in this order, and returns the entries still to run:

1. inputs stay inside ``dataset_dir``: an input that is, or is reached through, a symbolic link pointing out of the
   folder is refused with the link and its target named (``allow_outside_root=True`` allows it); the output folder
   is not the input folder (its outputs would be the next run's inputs);
2. every other entry of the folder is logged as skipped, with what it holds (hidden files at INFO level); an image
   left out whose output would be an input's (a listing keyed by name keeps one of ``x.nii`` and ``x.nii.gz``) is
   refused as a name conflict;
3. no two inputs share an output and no output replaces an input
   (:func:`~monai_unet2.data.outputs.check_output_names`);
4. the output folder exists or can be created, a file can be written in it, and no output name is taken by a folder;
5. with ``resume``, inputs whose outputs are finished (they open and fit their input) are left out
   (:func:`~monai_unet2.data.pending_inputs`); without it, outputs of an earlier run that will be replaced are
   counted in the log.

Under torchrun (a process group is initialised, ``configs/multi_gpu_inference.json``) the checks run on rank 0 only
and every rank receives its list (:func:`~monai_unet2.distributed.from_rank_zero`): the output folder is created
once, and resume's pending list is the same on every rank however soon another rank starts writing; each rank then
runs its share of that list (the config's ``DistributedSampler``).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_unet2.data.datalist import DatalistError
from monai_unet2.data.file_kinds import sniff
from monai_unet2.data.files import OutputWriteError, dicom_files, ensure_output_dir
from monai_unet2.data.outputs import OutputNameError, check_output_names, output_paths, output_source, pending_inputs
from monai_unet2.distributed import from_rank_zero

__all__ = ["batch_datalist", "check_writable", "links_out_of"]

logger = logging.getLogger(__name__)


def _sources(entry: Mapping[str, Any] | str, image_key: str) -> list[str]:
    value = entry[image_key] if isinstance(entry, Mapping) else entry
    return [os.fspath(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _resolved(path: Path) -> Path | None:
    """``path`` with every link followed, or ``None`` for a link loop."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: "Symlink loop" (Python < 3.13)
        return None


def links_out_of(folder: str | os.PathLike, depth: int = 2, root: str | os.PathLike | None = None) -> dict[str, str]:
    """Symbolic links under ``folder`` (down to ``depth`` levels, not entering linked folders) whose targets resolve
    outside ``root``.

    Args:
        folder: the folder to scan.
        depth: how many levels to look into (2: the inputs of a folder, and the files of its series folders).
        root: the folder links must stay in; default ``folder``.

    Returns:
        link path -> resolved target, for each link that leaves ``root`` (broken links included).
    """
    root = Path(root if root is not None else folder).resolve()
    found: dict[str, str] = {}
    level = [Path(folder)]
    for _ in range(depth):
        below = []
        for directory in level:
            for entry in sorted(directory.iterdir()):
                if entry.is_symlink():
                    target = _resolved(entry)
                    if target is not None and not _inside(target, root):
                        found[str(entry)] = str(target)
                elif entry.is_dir():
                    below.append(entry)
        level = below
    return found


def _escapes(root: Path, inputs: set[Path]) -> list[str]:
    """The links through which ``inputs`` (resolved) leave ``root``, and inputs outside it no link explains."""
    links = links_out_of(root, depth=2)
    for folder in (path for path in inputs if path.is_dir() and _inside(path, root)):
        links.update(links_out_of(folder, depth=1, root=root))
    named = [
        f"{link} -> {target}"
        for link, target in links.items()
        if any(
            path == Path(target) or Path(target) in path.parents or Path(link).parent.resolve() == path
            for path in inputs
        )
    ]
    explained = {Path(target) for link, target in links.items()}
    named += [
        str(path)
        for path in sorted(inputs)
        if not _inside(path, root) and not any(path == target or target in path.parents for target in explained)
    ]
    return named


def check_writable(output_dir: str | os.PathLike) -> None:
    """Create ``output_dir`` if needed and write (then remove) a small file in it.

    Args:
        output_dir: the folder outputs go to.

    Raises:
        OutputWriteError: naming the folder and the cause (not writable, read-only file system, disk full, a file
            in the way).
    """
    folder = ensure_output_dir(output_dir)
    probe = os.path.join(folder, f".write-test-{uuid.uuid4().hex[:12]}")
    try:
        with open(probe, "wb") as handle:
            handle.write(b"0")
        os.remove(probe)
    except OSError as error:
        raise OutputWriteError(
            f"cannot write into the output folder {folder} ({error.strerror or error}); nothing was run"
        ) from error


def _unlisted(folder: Path, inputs: set[Path]) -> list[tuple[Path, str, bool]]:
    """The entries of ``folder`` that are no input: (entry, why, whether it holds an image), logged as skipped."""
    found = []
    for entry in sorted(folder.iterdir()):
        target = _resolved(entry)
        if target in inputs:
            continue
        if target is None:
            found.append((entry, "a symbolic link loop", False))
        elif entry.name.startswith("."):
            found.append((entry, "a hidden file or folder", False))
        elif entry.is_dir() and next(dicom_files(entry, log_ignored=False), None) is None:
            found.append((entry, "a folder without DICOM files", False))
        else:
            kind = sniff(entry)
            found.append((entry, f"not an input of this batch ({kind.description})", kind.family is not None))
    for entry, why, _ in found:
        (logger.info if entry.name.startswith(".") else logger.warning)(f"{entry}: skipped, {why}")
    return found


def _named_like_an_input(unlisted: list[Path], datalist: Sequence, naming: tuple, image_key: str) -> list[str]:
    """Images left out of the datalist whose outputs would be an input's: a dataset listing keyed by name keeps one of
    ``x.nii`` and ``x.nii.gz`` (or a series folder ``x`` and ``x.nii.gz``) and drops the other without a word."""
    claimed = {}
    for entry in datalist:
        source = output_source(entry, image_key)
        for path in output_paths(source, *naming):
            claimed[os.path.normcase(path).lower()] = source
    problems = []
    for entry in unlisted:
        for path in output_paths(str(entry), *naming):
            source = claimed.get(os.path.normcase(path).lower())
            if source is not None:
                problems.append(f"{entry} and {source} would both be written to {os.path.basename(path)}")
    return problems


def batch_datalist(
    datalist: Sequence[Mapping[str, Any] | str],
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    output_postfix: str = "seg",
    output_format: str = "nifti",
    resume: bool = False,
    allow_outside_root: bool = False,
    image_key: str = "image",
) -> list:
    """The entries of ``datalist`` to run, after the checks of the module docstring.

    In an inference config: ``"datalist": "$monai_unet2.engines.batch_datalist(inference_datalist(@dataset_dir),
    @dataset_dir, @output_dir, @output_postfix, @output_format, @resume)"``. Under torchrun, rank 0 runs the
    checks and every rank gets the same list (or rank 0 raises the refusal and the other ranks end with status 1).

    Args:
        datalist: the inputs (``{"image": path, ...}`` or paths) listed from ``dataset_dir``.
        dataset_dir: the input folder (or one input file).
        output_dir, output_postfix, output_format: as given to :class:`~monai_unet2.transforms.SaveSegmentationd`.
        resume: leave out inputs whose outputs are finished.
        allow_outside_root: accept inputs reached through symbolic links that point out of ``dataset_dir``.
        image_key: key of the input path in the entries.

    Raises:
        DatalistError: an input reached through a link out of ``dataset_dir``.
        OutputNameError: two inputs would write the same output, or an output would replace an input.
        OutputWriteError: the output folder cannot be created or written.
    """
    return from_rank_zero(
        _checked_datalist,
        datalist,
        dataset_dir,
        output_dir,
        output_postfix,
        output_format,
        resume,
        allow_outside_root,
        image_key,
    )


def _checked_datalist(
    datalist: Sequence[Mapping[str, Any] | str],
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    output_postfix: str,
    output_format: str,
    resume: bool,
    allow_outside_root: bool,
    image_key: str,
) -> list:
    """:func:`batch_datalist` in one process."""
    folder = Path(dataset_dir)
    if folder.is_dir():
        root = folder.resolve()
        if _resolved(Path(output_dir)) == root:
            raise OutputWriteError(
                f"the output folder {output_dir} is the input folder: outputs would be taken for inputs by the next "
                "run; give another --output_dir"
            )
        inputs = {Path(source).resolve() for entry in datalist for source in _sources(entry, image_key)}
        escapes = _escapes(root, inputs)
        if escapes and not allow_outside_root:
            raise DatalistError(
                f"input(s) outside the input folder {root} (symbolic links that leave it: link -> target): "
                f"{'; '.join(escapes)}. "
                "Inputs are read only from inside --dataset_dir: copy the files in, or pass --allow_outside_root True "
                "if these links are intended"
            )
        images = []
        for listing in sorted({path.parent for path in inputs if _inside(path, root)} or {root}):
            images += [entry for entry, _, image in _unlisted(listing, inputs) if image]
        naming = (output_dir, output_postfix, output_format)
        hidden = _named_like_an_input(images, datalist, naming, image_key)
        if hidden:
            raise OutputNameError(
                f"{len(hidden)} output name conflict(s) in {os.fspath(output_dir)}, nothing was run: {'; '.join(hidden)} "
                "(only one of each was listed as an input). Rename one of each so that their names without suffix differ"
            )
    check_output_names(datalist, output_dir, output_postfix, output_format, image_key)
    check_writable(output_dir)
    outputs = [
        path
        for entry in datalist
        for path in output_paths(output_source(entry, image_key), output_dir, output_postfix, output_format)
    ]
    occupied = [path for path in outputs if os.path.lexists(path) and not os.path.isfile(path)]
    if occupied:
        raise OutputWriteError(
            f"output name(s) taken by a folder or a broken link, nothing was run: {', '.join(occupied)}; move them away"
        )
    if resume:
        return pending_inputs(datalist, output_dir, output_postfix, output_format, image_key)
    existing = sum(os.path.isfile(path) for path in outputs)
    if existing:
        logger.info(
            f"{existing} output(s) of an earlier run in {output_dir} will be replaced (--resume True keeps the finished ones)"
        )
    return list(datalist)
