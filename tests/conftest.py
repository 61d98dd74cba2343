"""Shared test setup: never touch the network, and small model configurations."""

import atexit
import importlib.util
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One intra-op thread (inherited by the scripts the tests start): the test models are tiny, and on a small shared
# machine the threads of each parallel op wait for one another at every barrier (the fast tier takes 3-4x longer)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A datasets cache of this session's own (inherited by the scripts the tests start): with the shared one, `load_dataset`
# of a test's parquet folder was seen to return the rows an earlier session had cached (another model's units) rather
# than the folder's
_DATASETS_CACHE = tempfile.mkdtemp(prefix="spidr-hf-tests-datasets-")
os.environ["HF_DATASETS_CACHE"] = _DATASETS_CACHE
atexit.register(shutil.rmtree, _DATASETS_CACHE, ignore_errors=True)

TINY_CONFIG = {
    "num_hidden_layers": 4,
    "num_codebooks": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": (32,) * 7,
    "num_conv_pos_embedding_groups": 4,
    "codebook_size": 16,
}


# Marks that transformers' common model tests carry (tests/test_transformers_common.py); transformers' own conftest.py,
# which is not in its source distribution, registers them
TRANSFORMERS_TEST_MARKS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "torch_compile_test",
)


def pytest_configure(config: pytest.Config) -> None:
    for mark in TRANSFORMERS_TEST_MARKS:
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' common model tests")


class Cut(BaseException):
    """An injected interruption: like a KeyboardInterrupt, nothing in spidr-hf catches it."""


@contextmanager
def renames_cut_after(monkeypatch, count: int) -> Iterator[list[str]]:
    """
    Within the block, the renames that publish spidr-hf's files and folders (`os.replace`, and `shutil.move` of a
    staging folder) go through `count` times, then raise `Cut`: an interruption just before the next one. Yields the
    names renamed so far.
    """
    from spidr_hf.io import atomic_files

    done: list[str] = []
    real_replace, real_move = os.replace, shutil.move

    def cut(rename):
        def renamed(source, destination):
            if len(done) == count:
                raise Cut
            done.append(Path(destination).name)
            return rename(source, destination)

        return renamed

    monkeypatch.setattr(atomic_files.os, "replace", cut(real_replace))
    monkeypatch.setattr(atomic_files.shutil, "move", cut(real_move))
    try:
        yield done
    finally:
        monkeypatch.setattr(atomic_files.os, "replace", real_replace)
        monkeypatch.setattr(atomic_files.shutil, "move", real_move)


# What every saved SpidR folder maps for remote code: the student, the pretraining model and the four heads
SAVED_AUTO_MAP = {
    "AutoConfig": "configuration_spidr.SpidrConfig",
    "AutoModel": "modeling_spidr.SpidrModel",
    "AutoModelForPreTraining": "modeling_spidr.SpidrForPreTraining",
    "AutoModelForCTC": "modeling_spidr.SpidrForCTC",
    "AutoModelForAudioClassification": "modeling_spidr.SpidrForSequenceClassification",
    "AutoModelForAudioFrameClassification": "modeling_spidr.SpidrForAudioFrameClassification",
    "AutoModelForAudioXVector": "modeling_spidr.SpidrForXVector",
}


def write_audio(path: Path, audio, rate: int = 16000) -> Path:
    """Mono samples as an audio file (its suffix says the format), in a folder made if needed."""
    import torch
    from torchcodec.encoders import AudioEncoder

    path.parent.mkdir(parents=True, exist_ok=True)
    AudioEncoder(torch.as_tensor(audio, dtype=torch.float32)[None], sample_rate=rate).to_file(str(path))
    return path


@pytest.fixture
def tiny_config_kwargs() -> dict:
    return dict(TINY_CONFIG)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A tiny built-in corpus (2 speakers, about a minute of speech) for training runs."""
    from spidr_hf.data.corpus import build_corpus

    folder = tmp_path_factory.mktemp("corpus")
    build_corpus(folder, hours=0.02, num_speakers=2, dev_speakers=1, seed=0)
    return folder


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    """A saved tiny random SpidR pretraining model with its feature extractor (what `push` and `evaluate` read)."""
    import torch

    from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining

    folder = tmp_path_factory.mktemp("source") / "model"
    torch.manual_seed(0)
    SpidrForPreTraining(SpidrConfig(**TINY_CONFIG)).save_pretrained(folder)
    SpidrFeatureExtractor().save_pretrained(folder)
    return folder


def two_process_launcher() -> list[str]:
    """`accelerate launch` of 2 CPU processes (gloo) on a port that is free now, so that runs cannot collide."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    return [*launcher, "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script that is not part of a package (training/train.py, benchmarks/bench.py) as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
