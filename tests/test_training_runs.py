"""
What every training run shares (spidr_hf/training/resume.py), through the cheapest script, training/train_ulm.py: a
checkpoint cut off by a kill or a full disk is set aside and the run resumes from the last complete one to the same
model, a resume on other inputs is refused, one run at a time writes into an output folder, and training stops in one
line when its weights are no longer finite.
"""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import load_script
from safetensors.torch import load_file, save_file

from spidr_hf.errors import SpidrError, WriteError, is_user_error
from spidr_hf.io import atomic_files
from spidr_hf.io.file_locks import exclusive_lock
from spidr_hf.training.resume import RUN_INPUTS_FILE, incomplete_reason
from spidr_hf.units.record import UnitIdentity, write_units_folder
from spidr_hf_cli import run_script

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ULM = ROOT / "training" / "train_ulm.py"


@pytest.fixture(scope="module")
def train_ulm():
    return load_script(TRAIN_ULM, "train_ulm_runs").main


def units_folder(folder: Path, seed: int) -> Path:
    """A units folder of 40 files of random units (another seed: another encoder, other units)."""
    rng = np.random.default_rng(seed)
    identity = UnitIdentity("codebook", f"model-{seed}", f"{seed}" * 64, 3, 16, False)
    units = {f"file{index:03d}": rng.integers(0, 16, size=rng.integers(30, 80)) for index in range(40)}
    return write_units_folder(folder, identity, units, "corpus")


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> Path:
    return units_folder(tmp_path_factory.mktemp("units") / "units", seed=0)


def ulm_config(units: Path, output_dir: Path, **overrides) -> Path:
    """A config of a tiny OPT trained for 6 steps, saved every 2, written beside `output_dir`."""
    config = {
        "units": str(units),
        "model_type": "opt",
        "model_config": {
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "ffn_dim": 32,
            "word_embed_proj_dim": 16,
            "max_position_embeddings": 64,
        },
        "block_size": 32,
        "eval_fraction": 0.0,
        "output_dir": str(output_dir),
        "max_steps": 6,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_steps": 2,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "report_to": "none",
        "seed": 0,
        **overrides,
    }
    path = output_dir.with_name(f"{output_dir.name}.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def straight_run(train_ulm, units, tmp_path_factory) -> Path:
    """The model of a run that nothing interrupted."""
    output_dir = tmp_path_factory.mktemp("straight") / "run"
    train_ulm([str(ulm_config(units, output_dir))])
    return output_dir


def assert_same_model(folder: Path, expected: Path) -> None:
    actual, wanted = load_file(folder / "model.safetensors"), load_file(expected / "model.safetensors")
    assert actual.keys() == wanted.keys()
    for key, value in wanted.items():
        assert torch.allclose(actual[key], value, rtol=0, atol=1e-6), key


def test_a_checkpoint_is_complete_only_with_its_state_and_every_file_whole(tmp_path):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    save_file({"weight": torch.arange(1000.0)}, checkpoint / "model.safetensors")
    torch.save({"state": torch.arange(1000.0)}, checkpoint / "optimizer.pt")
    assert incomplete_reason(checkpoint) == "no trainer_state.json"  # cut off before its last file
    state = json.dumps({"global_step": 4, "log_history": []})
    (checkpoint / "trainer_state.json").write_text(state[: len(state) // 2])
    assert incomplete_reason(checkpoint) == "trainer_state.json is cut off"
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert incomplete_reason(checkpoint) == "its trainer_state.json is not that of step 4"
    (checkpoint / "trainer_state.json").write_text(state)
    assert incomplete_reason(checkpoint) is None
    for name in ("model.safetensors", "optimizer.pt"):  # cut off since, by a crash of the machine
        whole = (checkpoint / name).read_bytes()
        (checkpoint / name).write_bytes(whole[:-100])
        assert incomplete_reason(checkpoint) == f"{name} is cut off"
        (checkpoint / name).write_bytes(whole)
    assert incomplete_reason(checkpoint) is None


# Runs train_ulm.py and kills it (SIGKILL) at a fixed point of the saving of checkpoint-KILL_AT
KILL_LAUNCHER = textwrap.dedent(
    """
    import dataclasses, importlib.util, json, os, signal, sys
    from transformers import TrainerState

    kill_at, point = sys.argv[1], sys.argv[2]
    save_to_json = TrainerState.save_to_json

    def killed_save(self, json_path):
        if f"checkpoint-{{kill_at}}" in json_path:
            if point == "inside-state":  # half of trainer_state.json is on disk
                with open(json_path, "w") as file:
                    file.write(json.dumps(dataclasses.asdict(self))[:100])
            os.kill(os.getpid(), signal.SIGKILL)  # after the weights, optimizer and scheduler
        return save_to_json(self, json_path)

    TrainerState.save_to_json = killed_save
    spec = importlib.util.spec_from_file_location("train_ulm", {script!r})
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(sys.argv[3:])
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before-state", "inside-state"])
def test_a_run_killed_while_it_saves_resumes_from_the_last_complete_checkpoint(
    train_ulm, units, straight_run, tmp_path, point
):
    output_dir = tmp_path / "run"
    config = ulm_config(units, output_dir)
    launcher = tmp_path / "kill_launcher.py"
    launcher.write_text(KILL_LAUNCHER.format(script=str(TRAIN_ULM)))
    killed = subprocess.run([sys.executable, str(launcher), "4", point, str(config)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (output_dir / "checkpoint-4" / "optimizer.pt").is_file()
    assert incomplete_reason(output_dir / "checkpoint-4") is not None

    train_ulm([str(config)])  # the rerun: the same command
    aside = output_dir / "incomplete-checkpoint-4"
    assert aside.is_dir() and (aside / "trainer_state.json").is_file() == (point == "inside-state")
    assert incomplete_reason(output_dir / "checkpoint-4") is None  # saved again, whole
    assert_same_model(output_dir, straight_run)


@pytest.mark.slow
def test_a_full_disk_at_the_first_save_is_one_line_and_the_rerun_trains_the_same_model(
    train_ulm, units, straight_run, tmp_path, monkeypatch, capsys
):
    from transformers import trainer as transformers_trainer

    real_save = torch.save

    def full_disk_save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)  # as far as the disk went
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(transformers_trainer.torch, "save", full_disk_save)
    monkeypatch.setattr(atomic_files, "_LOW_SPACE_BYTES", 1 << 62)  # the disk is all but full
    output_dir = tmp_path / "run"
    config = ulm_config(units, output_dir)
    with pytest.raises(SystemExit) as exit:
        run_script(train_ulm, [str(config)], "train_ulm.py")
    assert exit.value.code == 1
    error = capsys.readouterr().err  # after the progress bars: the error in one line
    assert "Traceback" not in error
    assert error.split("\n")[-2].startswith(
        f"train_ulm.py: error: Could not write {output_dir / 'checkpoint-2'}: no space"
    )
    assert not (output_dir / "checkpoint-2" / "trainer_state.json").exists()

    monkeypatch.undo()  # room was made
    train_ulm([str(config)])
    assert (output_dir / "incomplete-checkpoint-2").is_dir()
    assert_same_model(output_dir, straight_run)


@pytest.mark.slow
def test_a_resume_on_other_units_is_refused_naming_what_differs(train_ulm, units, tmp_path):
    output_dir = tmp_path / "run"
    train_ulm([str(ulm_config(units, output_dir, max_steps=2))])
    other = units_folder(tmp_path / "other-units", seed=1)
    before = sorted(path.name for path in output_dir.rglob("*"))
    with pytest.raises(SpidrError) as error:
        train_ulm([str(ulm_config(other, output_dir, max_steps=4))])
    message = str(error.value)
    assert f"{output_dir} holds a run on other inputs" in message and "\n" not in message
    assert f'units: "{units}" -> "{other}"' in message
    assert f"unit_source.weights_sha256: {json.dumps('0' * 64)} -> {json.dumps('1' * 64)}" in message
    assert sorted(path.name for path in output_dir.rglob("*")) == before  # nothing trained or written
    # Other model sizes are other inputs too, and so is a learning rate that the checkpoint's optimizer state would
    # silently override; the same inputs resume
    with pytest.raises(SpidrError, match=r"model_config.hidden_size: 16 -> 32"):
        train_ulm([str(ulm_config(units, output_dir, max_steps=4, model_config={"hidden_size": 32}))])
    with pytest.raises(SpidrError, match=r"\(optimizer.learning_rate: 0.001 -> 0.01\)"):
        train_ulm([str(ulm_config(units, output_dir, max_steps=4, learning_rate=0.01))])
    train_ulm([str(ulm_config(units, output_dir, max_steps=4))])
    assert json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4


@pytest.mark.slow
def test_a_folder_with_nothing_to_resume_takes_other_inputs(train_ulm, units, tmp_path):
    output_dir = tmp_path / "run"
    train_ulm([str(ulm_config(units, output_dir, max_steps=2, save_strategy="no"))])  # no checkpoint: a model
    shutil.rmtree(output_dir)
    output_dir.mkdir()
    (output_dir / RUN_INPUTS_FILE).write_text(
        json.dumps({"written_by": "spidr-hf training", "inputs": {"units": "elsewhere"}})
    )  # the record of a run killed before its first checkpoint
    other = units_folder(tmp_path / "other-units", seed=1)
    train_ulm([str(ulm_config(other, output_dir, max_steps=2))])
    assert json.loads((output_dir / RUN_INPUTS_FILE).read_text())["inputs"]["units"] == str(other)


@pytest.mark.slow
def test_two_runs_cannot_write_into_one_output_dir_at_once(train_ulm, units, tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    busy = pytest.raises(SpidrError, match=f"Another training run is writing into {output_dir}")
    with exclusive_lock(output_dir, wait=False), busy:  # another run holds the folder
        train_ulm([str(ulm_config(units, output_dir))])
    assert list(output_dir.iterdir()) == []
    train_ulm([str(ulm_config(units, output_dir, max_steps=2))])  # once it is done, the folder is free
    assert (output_dir / "model.safetensors").is_file()


@pytest.mark.slow
def test_training_stops_in_one_line_when_the_weights_are_no_longer_finite(train_ulm, units, tmp_path):
    output_dir = tmp_path / "run"
    with pytest.raises(SpidrError, match="the weights are no longer finite") as error:
        train_ulm([str(ulm_config(units, output_dir, learning_rate=1e30, logging_steps=5))])
    assert is_user_error(error.value) and "\n" not in str(error.value)
    saved = [path for path in output_dir.rglob("*.safetensors")]
    assert not (output_dir / "model.safetensors").exists()
    for path in saved:  # what was saved before is finite
        assert all(value.isfinite().all() for value in load_file(path).values()), path


def test_a_checkpoint_that_cannot_be_resumed_explicitly_is_one_line(tmp_path):
    from transformers import TrainingArguments

    from spidr_hf.training.resume import checkpoint_to_resume

    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    for given, message in ((checkpoint, "is incomplete (no trainer_state.json)"), (tmp_path / "x", "is not a folder")):
        arguments = TrainingArguments(output_dir=str(tmp_path / "out"), resume_from_checkpoint=str(given))
        with pytest.raises(SpidrError, match=re.escape(message)):
            checkpoint_to_resume(arguments)


def test_full_disk_errors_of_other_writers_are_one_line(tmp_path, monkeypatch):
    """safetensors says "no space" in its own error type: told by the free space left, as torch.save's."""
    from safetensors import SafetensorError

    from spidr_hf.io.atomic_files import writing

    monkeypatch.setattr(atomic_files, "_LOW_SPACE_BYTES", 1 << 62)  # the disk is all but full
    expected = f"Could not write {tmp_path / 'model.safetensors'}: no space left on the device"
    with pytest.raises(WriteError, match=re.escape(expected)), writing(tmp_path / "model.safetensors"):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(WriteError, match="no space left"), writing(tmp_path / "x"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.undo()
    # With room left, another failure keeps its own error
    with pytest.raises(SafetensorError), writing(tmp_path / "model.safetensors"):
        raise SafetensorError("something else")
