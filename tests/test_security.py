"""Untrusted checkpoints: every load in the repo uses ``torch.load(..., weights_only=True)``, and a crafted pickle
checkpoint is refused by the bundle's inference, by the resume switch (``TrainingStateLoader``) and by
``monai_unet2.tracking.load_model`` before its payload runs."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from monai_unet2.handlers import TrainingStateError, TrainingStateLoader
from monai_unet2.networks import UNet

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
HIPPOCAMPUS = BUNDLES / "hippocampus_unet25d_segmentation"
CASE = HIPPOCAMPUS / "sample_data" / "imagesTr" / "hippocampus_004.nii.gz"
SCANNED = [ROOT / "monai_unet2", ROOT / "benchmarks", ROOT / "scripts", BUNDLES]
UNSAFE_CALLS = ("pickle.load(", "pickle.loads(", "cloudpickle.load", "mlflow.pytorch.load_model(", "joblib.load(")


class MarkerPayload:
    """Unpickling this runs a shell command that writes ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > '{self.marker}'",)


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A real state dict of the bundle's network with one extra entry whose unpickling runs a command."""
    state = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32).state_dict()
    state["payload"] = MarkerPayload(marker)
    torch.save(state, path)
    return path


def torch_load_calls(text: str) -> list[str]:
    """The argument text of every ``torch.load(`` call in ``text`` (balanced parentheses)."""
    calls = []
    for match in re.finditer(r"torch\.load\(", text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            depth += {"(": 1, ")": -1}.get(text[index], 0)
            if depth == 0:
                calls.append(text[start:index])
                break
        else:
            calls.append(text[start:])
    return calls


def unsafe_loads(paths) -> list[str]:
    """``file: call`` for each ``torch.load`` without ``weights_only=True`` or other unpickling call in ``paths``."""
    found = []
    for base in paths:
        for path in sorted(base.rglob("*")):
            if path.suffix not in (".py", ".json") or ".venv" in path.parts:
                continue
            text = path.read_text(errors="replace")
            for call in torch_load_calls(text):
                if not re.search(r"weights_only\s*=\s*True", call):
                    found.append(f"{path.relative_to(base.parent)}: torch.load({call})")
            found += [f"{path.relative_to(base.parent)}: {name}" for name in UNSAFE_CALLS if name in text]
    return found


def test_every_checkpoint_load_in_the_repo_is_weights_only():
    assert unsafe_loads(SCANNED) == []
    # The scanner itself catches what it should.
    assert torch_load_calls("x = torch.load(f, map_location=torch.device('cpu'))\n") == [
        "f, map_location=torch.device('cpu')"
    ]


def test_scanner_finds_an_unsafe_load(tmp_path):
    (tmp_path / "bad.py").write_text("state = torch.load(path)\nok = torch.load(path, weights_only=True)\n")
    (tmp_path / "bad.json").write_text('{"net": "$torch.load(@ckpt, weights_only=False)"}')
    (tmp_path / "worse.py").write_text("import pickle\nobj = pickle.load(open(path, 'rb'))\n")
    found = unsafe_loads([tmp_path])
    assert len(found) == 3 and any("bad.py: torch.load(path)" in f for f in found)


def test_resume_refuses_a_crafted_training_state(tmp_path):
    marker = tmp_path / "marker"
    checkpoint = crafted_checkpoint(tmp_path / "training_state.pt", marker)
    network = UNet(spatial_dims=2, in_channels=5, out_channels=3, features=32)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    engine = Engine(lambda engine, batch: None)
    TrainingStateLoader(checkpoint, {"network": network}, resume=True).attach(engine)
    with pytest.raises(TrainingStateError, match=f"{checkpoint}: cannot resume") as caught:
        engine.run([0], max_epochs=1)
    assert "Weights only load failed" in str(caught.value)
    assert "posix.system" in str(caught.value) or "os.system" in str(caught.value)
    assert not marker.exists()
    assert all(torch.equal(before[name], value) for name, value in network.state_dict().items())


def test_tracking_load_model_refuses_crafted_pickle(tmp_path):
    from monai_unet2.tracking import load_model

    bundle = tmp_path / "bundle"
    shutil.copytree(HIPPOCAMPUS / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    marker = tmp_path / "marker"
    crafted_checkpoint(bundle / "models" / "model.pt", marker)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_model(str(bundle))
    assert not marker.exists()


@pytest.mark.integration
@pytest.mark.slow
def test_bundle_inference_refuses_crafted_checkpoint(tmp_path):
    inputs, outputs, marker = tmp_path / "inputs", tmp_path / "outputs", tmp_path / "marker"
    inputs.mkdir()
    shutil.copy(CASE, inputs / CASE.name)
    checkpoint = crafted_checkpoint(tmp_path / "crafted.pt", marker)
    argv = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(HIPPOCAMPUS / "configs" / "inference.json"),
        "--bundle_root",
        str(HIPPOCAMPUS),
        "--ckpt_path",
        str(checkpoint),
        "--dataset_dir",
        str(inputs),
        "--output_dir",
        str(outputs),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Weights only load failed" in output
    assert not marker.exists()
    assert not outputs.exists() or not any(p.is_file() and "logs" not in p.parts for p in outputs.rglob("*"))
