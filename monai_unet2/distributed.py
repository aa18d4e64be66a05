"""PyTorch distributed helpers for the bundles' ``configs/multi_gpu_*.json`` (``torchrun ... -m monai.bundle run``):
DDP training, and cohort inference and evaluation sharded over ranks.

MONAI already does the hard parts: ``monai.data.DistributedSampler`` shards the data (``even_divisible=False``
keeps every validation volume exactly once), the metric handlers all-gather their per-volume buffers before
aggregating (``CumulativeIterationMetric.get_buffer``), ``CheckpointSaver`` and ``CheckpointLoader`` unwrap
``DistributedDataParallel``, and ``MetricsSaver`` gathers file names itself. What a bundle config still needs, and
nothing in MONAI or torch offers as one call:

- :func:`local_device` / :func:`init_process_group`: ``cuda:$LOCAL_RANK`` with NCCL on GPUs, ``cpu`` with Gloo
  otherwise, the backend chosen from the device so one config runs on both.
- :func:`rank_zero_handlers`: the trainer / evaluator handler lists without the handlers that run on rank 0 only on
  the other ranks. A handler declares it with a class attribute ``rank_zero_only = True`` (every writer of this
  package does); MONAI's own writers, which cannot declare it, are listed in :data:`MONAI_RANK_ZERO_HANDLERS`.
  Handlers that take part in collectives (validation, metric savers, early stopping) stay on every rank, otherwise
  the other ranks would wait for them forever.
- :func:`from_rank_zero` / :func:`gather_objects`: a batch's preflight (checks, output folder, resume's pending
  list) run once on rank 0 and its result, or its refusal, handed to every rank; per-case results (failures,
  metrics) collected from every rank. A no-op outside a process group, so the single-process configs call them too.
- :class:`BroadcastBuffers`: rank 0's BatchNorm running statistics copied to every rank before validation.
  DDP synchronises buffers at the *start* of each training forward pass, so after the last iteration each rank
  holds statistics updated by its own last batch; without this, each rank would validate a slightly different
  model and the aggregated Dice would not be the Dice of the checkpoint rank 0 saves.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from monai.handlers import CheckpointSaver, MLFlowHandler, StatsHandler, TensorBoardHandler
from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = [
    "MONAI_RANK_ZERO_HANDLERS",
    "BroadcastBuffers",
    "backend_for",
    "destroy_process_group",
    "from_rank_zero",
    "gather_objects",
    "init_process_group",
    "is_distributed",
    "is_rank0",
    "local_device",
    "quiet_other_ranks",
    "rank_zero_handlers",
    "runs_on_rank_zero_only",
]

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

#: MONAI's handlers that only write (console lines, checkpoint files, tracking) and so run on rank 0 only. They are
#: listed here because MONAI's classes carry no ``rank_zero_only`` declaration; ours do.
MONAI_RANK_ZERO_HANDLERS: tuple[type, ...] = (StatsHandler, CheckpointSaver, MLFlowHandler, TensorBoardHandler)


def backend_for(device: torch.device | str) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` for anything else (CPU).

    Args:
        device: the device this process trains on.
    """
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (one GPU per process, as torchrun starts them), else ``cpu``.

    Raises:
        RuntimeError: when ``LOCAL_RANK`` names a GPU this process cannot see (more processes than GPUs).
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}): start at most one process "
            "per GPU (torchrun --nproc_per_node)."
        )
    return torch.device(f"cuda:{local_rank}")


def init_process_group(device: torch.device | str, timeout_s: float | None = None) -> str:
    """Join the process group torchrun set up, with the backend :func:`backend_for` picks for ``device``.

    Does nothing when the group exists already (a caller that initialised it itself). On a GPU the device is made
    current first, so NCCL does not put every rank's context on GPU 0.

    Args:
        device: the device of this process (``@device`` of the bundle).
        timeout_s: how long a collective waits for the other ranks (torch's default, 10 to 30 minutes, when
            ``None``). Cohort inference meets the other ranks only at its end, after each rank ran its own share,
            which can take hours longer on one rank than on another; a rank that dies is noticed by torchrun,
            which stops the others, so a long timeout does not hide a failure.

    Returns:
        the backend of the process group.

    Raises:
        RuntimeError: when the process was not started by torchrun (its environment variables are missing).
    """
    device = torch.device(device)
    if dist.is_initialized():
        return str(dist.get_backend())
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"the multi_gpu_*.json configs need a process started by torchrun, but {', '.join(missing)} "
            "is not set: launch with `torchrun --nproc_per_node=<N> -m monai.bundle run --config_file "
            "\"['configs/train.json','configs/multi_gpu_train.json']\" ...` (or inference.json with "
            "multi_gpu_inference.json), or run the single-process config alone."
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend_for(device)
    timeout = datetime.timedelta(seconds=float(timeout_s)) if timeout_s is not None else None
    dist.init_process_group(backend=backend, timeout=timeout)
    return backend


def destroy_process_group() -> None:
    """Tear the process group down if there is one (the bundle's ``finalize``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank0() -> bool:
    """``True`` on global rank 0, and in a process that is not distributed at all."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def quiet_other_ranks(level: int = logging.WARNING) -> None:
    """On ranks other than 0, raise the root logger's level to ``level``: their INFO lines repeat rank 0's.

    Warnings and errors of every rank still reach the console. Engines, ``StatsHandler`` and MONAI log through
    loggers that inherit the root level, so this one call covers them.

    Args:
        level: the lowest level other ranks still print.
    """
    if not is_rank0():
        root = logging.getLogger()
        root.setLevel(max(root.level, level))


def from_rank_zero(compute: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``compute(*args, **kwargs)`` run on rank 0 only, its result handed to every rank.

    For work that must happen once and be seen alike by all ranks: a batch's preflight creates the output folder
    and lists the inputs whose outputs are not finished yet, and a rank that looked at the folder while another
    rank was already writing its first outputs would shard a different list. When ``compute`` raises, rank 0 raises
    the error and the other ranks end quietly with exit status 1 (``SystemExit``), so that the refusal is printed
    once; no rank is left waiting. Outside a process group this is a plain call.

    Args:
        compute: the function to run; its result must pickle (it crosses processes).
        args: positional arguments of ``compute``.
        kwargs: keyword arguments of ``compute``.
    """
    if not is_distributed():
        return compute(*args, **kwargs)
    message: list[Any] = [None]
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            message[0] = ("result", compute(*args, **kwargs))
        except Exception as raised:
            error = raised
            message[0] = ("error", f"{type(raised).__name__}: {raised}")
    dist.broadcast_object_list(message, src=0)
    kind, value = message[0]
    if error is not None:
        raise error
    if kind == "error":
        logging.getLogger(__name__).debug(f"rank {dist.get_rank()}: stopping, rank 0 refused the run: {value}")
        raise SystemExit(1)
    return value


def gather_objects(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` outside a process group).

    A collective: every rank must call it, the same number of times. Values must pickle.

    Args:
        value: what this rank contributes (e.g. its failed cases, its per-case metric rows).
    """
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def runs_on_rank_zero_only(handler: Any) -> bool:
    """Whether ``handler`` runs on rank 0 only: its ``rank_zero_only`` declaration, else membership of
    :data:`MONAI_RANK_ZERO_HANDLERS`.

    Args:
        handler: an entry of a trainer's or evaluator's handler list.
    """
    declared = getattr(handler, "rank_zero_only", None)
    return bool(declared) if declared is not None else isinstance(handler, MONAI_RANK_ZERO_HANDLERS)


def rank_zero_handlers(handlers: Iterable[Any] | None) -> list[Any]:
    """The handlers this rank attaches: all of them on rank 0, on the other ranks those that do not declare
    themselves rank-0 only (:func:`runs_on_rank_zero_only`).

    A rank-0-only handler only writes (logs, files, tracking) and one writer is wanted. Everything else (LR schedule,
    loss-weight schedule, ``ValidationHandler``, ``CheckpointLoader``, ``MetricsSaver``, ``EarlyStopHandler``,
    unknown handlers) runs on every rank, because the ranks must stay in step and some of them call collectives.
    ``None`` entries (items switched off with ``_disabled_`` and referenced from the list) are dropped on every rank.

    Args:
        handlers: a trainer's or evaluator's handler list (``@train#handlers``); ``None`` for none.
    """
    handlers = [handler for handler in (handlers or []) if handler is not None]
    if is_rank0():
        return handlers
    return [handler for handler in handlers if not runs_on_rank_zero_only(handler)]


class BroadcastBuffers:
    """Copy the buffers (BatchNorm running statistics) of ``network`` from rank ``src`` to all ranks.

    Attach it to the evaluator: every validation then runs the very model rank 0 checkpoints, on every rank.
    Parameters need no copy (DDP keeps them identical through the gradient all-reduce). A no-op when not
    distributed.

    Args:
        network: the DDP-wrapped or plain network.
        src: the rank whose buffers win.
        event: the ignite event of the engine to run on (before the first iteration).
    """

    rank_zero_only = False

    def __init__(self, network: torch.nn.Module, src: int = 0, event: str = "STARTED") -> None:
        self.network = network
        self.src = src
        self.event = event

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` for ``event``.

        Args:
            engine: the evaluator (or any engine that must start from rank ``src``'s buffers).
        """
        engine.add_event_handler(Events[self.event], self)

    def __call__(self, engine: Engine | None = None) -> None:
        """Broadcast now (``engine`` is unused; ignite passes it)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        module = getattr(self.network, "module", self.network)
        with torch.no_grad():
            for buffer in module.buffers():
                dist.broadcast(buffer, src=self.src)
