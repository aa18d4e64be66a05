"""DDP training with ``configs/multi_gpu_train.json``: two Gloo processes on this CPU machine, started by torchrun.

The end-to-end test fine-tunes the shipped hippocampus model for one short epoch on the committed sample (9 train /
3 validation volumes) the way MONAI Label's multi-GPU path does (a ``CheckpointLoader`` in ``train#handlers``), then
checks that rank 0 alone tracked, checkpointed and registered, and that the logged validation Dice is the Dice of
the saved checkpoint on all three validation volumes, not on rank 0's shard. Starting from trained weights makes
every per-volume Dice non-trivial (a one-epoch model from scratch scores ~0), so the comparison can fail.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_runner import string_leaves
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver
from monai.data import DistributedSampler
from monai.handlers import CheckpointLoader
from torch.utils.data.distributed import DistributedSampler as TorchDistributedSampler

from monai_unet2.distributed import (
    BroadcastBuffers,
    backend_for,
    init_process_group,
    is_rank0,
    rank_zero_handlers,
    runs_on_rank_zero_only,
)

ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = ROOT / "bundles" / "hippocampus_unet25d_segmentation"
BUNDLES = [path.parents[1] for path in sorted((ROOT / "bundles").glob("*/configs/multi_gpu_train.json"))]


def test_backend_follows_the_device():
    assert backend_for("cpu") == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"
    assert is_rank0()  # not distributed: this process is the only writer


def test_validation_sampler_keeps_every_volume_exactly_once():
    for volumes in (3, 5, 12):
        for world_size in (2, 3):
            shards = [
                list(
                    DistributedSampler(
                        range(volumes), even_divisible=False, num_replicas=world_size, rank=rank, shuffle=False
                    )
                )
                for rank in range(world_size)
            ]
            assert sorted(itertools.chain(*shards)) == list(range(volumes)), (volumes, world_size, shards)
    # what the default (torch) sampler does: pads by repeating a volume, which would count it twice in the Dice
    padded = [list(TorchDistributedSampler(range(3), num_replicas=2, rank=rank, shuffle=False)) for rank in (0, 1)]
    assert sorted(itertools.chain(*padded)) == [0, 0, 1, 2]


def test_rank_zero_handlers_drops_disabled_items_when_not_distributed():
    keep = [object(), object()]
    assert rank_zero_handlers([keep[0], None, keep[1]]) == keep
    assert rank_zero_handlers(None) == []


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_every_handler_of_the_training_declares_where_it_runs(bundle, tmp_path):
    """Writers (logs, checkpoints, tracking) run on rank 0 only, what keeps the ranks in step runs on every rank.

    The lists are train.json's; multi_gpu_train.json passes them through ``rank_zero_handlers``.
    """
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(bundle)
    parser["output_dir"], parser["ckpt_dir"] = str(tmp_path / "eval"), str(tmp_path / "models")
    parser["train_datalist"], parser["val_datalist"] = [], []  # nothing is read: only the handler lists matter
    parser["train#dataloader#shuffle"] = False  # a random sampler refuses an empty dataset
    handlers = [parser.get_parsed_content(f"{section}#{index}") for section in ("train#handlers", "validate#handlers")
                for index in range(len(parser[section]))]  # fmt: skip
    rank_zero = {type(handler).__name__ for handler in handlers if runs_on_rank_zero_only(handler)}
    every_rank = {type(handler).__name__ for handler in handlers if not runs_on_rank_zero_only(handler)}
    assert rank_zero == {
        "AtomicCheckpointSaver", "EpochProgressBar", "PredictionPreview", "RegisterBestModel", "StatsHandler",
        "TrackedMLFlowHandler", "TrainingStateSaver",
    }  # fmt: skip
    assert {"TrainingStateLoader", "ValidationHandler", "LrScheduleHandler"} <= every_rank
    assert not runs_on_rank_zero_only(BroadcastBuffers(torch.nn.Linear(1, 1)))
    assert not runs_on_rank_zero_only(
        CheckpointLoader(load_path="model.pt", load_dict={"model": torch.nn.Linear(1, 1)})
    )


def test_outside_torchrun_the_error_names_the_launcher(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_process_group("cpu")


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_multi_gpu_config_merges_onto_the_bundles_train_config(bundle):
    """The overlay's overrides land in train.json's sections and every id it references exists there."""
    configs = bundle / "configs"
    overlay = json.loads((configs / "multi_gpu_train.json").read_text())
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
    referenced = {
        ref.replace("::", "#") for text in string_leaves(overlay) for ref in ReferenceResolver.match_refs_pattern(text)
    }
    assert {"network_def", "train#dataset", "train#handlers", "validate#dataset", "validate#handlers"} <= referenced
    missing = sorted(ref for ref in referenced if ref not in parser)
    assert not missing, f"{configs / 'multi_gpu_train.json'} refers to ids missing from train.json: {missing}"
    assert parser["train#dataloader#shuffle"] is False
    assert parser["validate#sampler#even_divisible"] is False


def run_torchrun(arguments: list[str], cwd: Path, timeout: float) -> str:
    """Run torchrun in its own process group; on timeout kill the group (agent and workers) and fail."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *arguments],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{output[-6000:]}")
    assert process.returncode == 0, f"torchrun failed ({process.returncode}):\n{output[-6000:]}"
    return output


def evaluate_checkpoint(checkpoint: Path, output_dir: Path) -> tuple[dict, torch.Tensor]:
    """Single-process evaluation with ``evaluate.json`` merged over ``train.json``, on the validation split."""
    parser = ConfigParser()
    parser.read_config([str(HIPPOCAMPUS / "configs" / name) for name in ("train.json", "evaluate.json")])
    parser.update(
        {
            "bundle_root": str(HIPPOCAMPUS),
            "ckpt_path": str(checkpoint),
            "split": "validation",
            "output_dir": str(output_dir),
        }
    )
    parser.parse()
    parser.get_parsed_content("initialize")
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    rows = parser.get_parsed_content("validate#report").rows
    per_volume = torch.tensor([[row[name]["dice"] for name in ("anterior", "posterior")] for row in rows])
    return {"dice": evaluator.state.metrics["mean_dice"]}, per_volume


@pytest.mark.integration
@pytest.mark.slow
def test_two_gloo_ranks_train_one_epoch_with_one_run_one_checkpoint_and_the_checkpoints_dice(tmp_path):
    from mlflow import MlflowClient

    shipped = HIPPOCAMPUS / "models" / "model.pt"
    assert shipped.is_file(), f"{shipped} is missing: the test fine-tunes the shipped weights"
    bundle_eval_existed = (HIPPOCAMPUS / "eval").exists()
    fine_tune = tmp_path / "fine_tune.json"
    fine_tune.write_text(
        json.dumps(
            {
                "+train#handlers": [
                    {"_target_": "CheckpointLoader", "load_path": str(shipped), "load_dict": {"model": "@network"}}
                ]
            }
        )
    )
    configs = HIPPOCAMPUS / "configs"
    config_files = [str(configs / "train.json"), str(configs / "multi_gpu_train.json"), str(fine_tune)]
    output = run_torchrun(
        [
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            repr(config_files),
            "--bundle_root",
            str(HIPPOCAMPUS),
            "--meta_file",
            str(configs / "metadata.json"),
            "--ckpt_dir",
            str(tmp_path / "models"),
            "--output_dir",
            str(tmp_path / "eval"),
            "--max_epochs",
            "1",
            "--epoch_length",
            "2",
            "--slices_per_volume",
            "2",
        ],
        cwd=tmp_path,
        timeout=420,
    )
    assert output.count("Got new best metric of val_mean_dice") == 1  # rank 1 logs warnings and errors only

    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == [
        "fold_0",
        "model.pt",
        "model.pt.trained.json",  # WeightsGuard's record: these weights were written by a training
    ]
    assert sorted(path.name for path in (tmp_path / "models" / "fold_0").iterdir()) == ["model.pt", "training_state.pt"]
    state = torch.load(tmp_path / "models" / "fold_0" / "training_state.pt", weights_only=True)
    assert state["trainer"]["iteration"] == state["trainer"]["epoch_length"]  # one epoch, written once by rank 0
    assert all(key.startswith("module.") for key in state["network"])  # the DDP network, resumable by this config
    assert bundle_eval_existed or not (HIPPOCAMPUS / "eval").exists()

    client = MlflowClient(f"sqlite:///{tmp_path / 'eval' / 'mlflow.db'}")
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert [metric.step for metric in client.get_metric_history(run.info.run_id, "val_mean_dice")] == [1]
    assert len(client.list_artifacts(run.info.run_id, "previews")) == 1
    versions = client.search_model_versions("name='hippocampus_unet25d_segmentation'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id

    metrics, per_volume = evaluate_checkpoint(tmp_path / "models" / "model.pt", tmp_path / "evaluation")
    assert per_volume.shape == (3, 2)  # three validation volumes x (anterior, posterior)
    logged = run.data.metrics
    assert logged["val_mean_dice"] > 0.3
    assert logged["val_mean_dice"] == pytest.approx(metrics["dice"], abs=1e-4)
    assert logged["val_dice_anterior"] == pytest.approx(per_volume[:, 0].mean().item(), abs=1e-4)
    assert logged["val_dice_posterior"] == pytest.approx(per_volume[:, 1].mean().item(), abs=1e-4)
    rank0_shard = list(DistributedSampler(range(3), even_divisible=False, num_replicas=2, rank=0, shuffle=False))
    assert abs(logged["val_mean_dice"] - per_volume[rank0_shard].mean().item()) > 1e-3
