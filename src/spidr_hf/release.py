"""
Hub release folders: weights, remote code, custom pipelines and the model card (`model_card.py`) written all or nothing,
then checked by loading the folder in a fresh interpreter that cannot import `spidr_hf` (`release_check.py`).
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from huggingface_hub import ModelCard
from transformers.dynamic_module_utils import custom_object_save

from . import release_check
from .atomic_files import new_folder
from .configuration_spidr import SAMPLING_RATE
from .feature_extraction_spidr import SpidrFeatureExtractor
from .loading import load
from .model_card import CardOptions, official_entry, recommended_layer, render_model_card
from .modeling_spidr import SpidrForPreTraining
from .pipeline_spidr import SpidrFeaturesPipeline, SpidrUnitsPipeline, custom_pipelines

PROBE_SECONDS = 2.0
CHECK_TIMEOUT_S = 900


def load_source(model_dir: Path) -> tuple[SpidrForPreTraining, SpidrFeatureExtractor]:
    """The full model (heads and codebooks included) and the feature extractor of a saved folder."""
    loaded = load(model_dir, "full", require_heads=True)
    return loaded.model.eval(), loaded.feature_extractor


def save_hub_ready(model, feature_extractor: SpidrFeatureExtractor, folder: str | os.PathLike) -> None:
    """Weights, configs and code files, the pipelines' too, so that `pipeline(task, model=folder,
    trust_remote_code=True)` works without spidr_hf."""
    model.config.custom_pipelines = custom_pipelines()
    model.save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    custom_object_save(SpidrFeaturesPipeline, folder)  # copies pipeline_spidr.py (and what it imports)


def write_release_folder(
    model: SpidrForPreTraining, feature_extractor: SpidrFeatureExtractor, card: ModelCard | None, destination: Path
) -> Path:
    """Write weights, configs, code files (pipelines included) and the card as README.md; all or nothing."""
    with new_folder(destination) as staging:
        save_hub_ready(model, feature_extractor, staging)
        if card is not None:
            card.save(staging / "README.md")
    return destination


def probe_signal() -> np.ndarray:
    """A fixed test signal at the model's sampling rate: a chirp in noise."""
    time = np.arange(int(PROBE_SECONDS * SAMPLING_RATE)) / SAMPLING_RATE
    noise = np.random.default_rng(0).standard_normal(time.size)
    return (np.sin(2 * np.pi * (200 + 400 * time) * time) + 0.1 * noise).astype(np.float32)


def check_release_folder(
    folder: Path, model: SpidrForPreTraining, feature_extractor: SpidrFeatureExtractor, layer: int
) -> None:
    """
    Load `folder` with AutoModel, AutoFeatureExtractor and both pipelines in a fresh interpreter that cannot import
    spidr_hf, and check that it gives the source model's features and units on a probe signal.
    """
    probe = probe_signal()
    with tempfile.TemporaryDirectory(prefix="spidr-release-check-") as scratch:
        np.save(Path(scratch) / "probe.npy", probe)
        output = Path(scratch) / "output.npz"
        # Offline, with an empty remote-code cache: only the folder itself can provide the code
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(Path(scratch) / "modules")}
        command = [
            sys.executable,
            "-I",
            release_check.__file__,
            str(folder.resolve()),
            str(Path(scratch) / "probe.npy"),
        ]
        try:
            completed = subprocess.run(
                [*command, str(layer), str(output)],
                env=environment,
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as error:
            raise ValueError(f"Loading {folder} without spidr_hf took over {CHECK_TIMEOUT_S} s.") from error
        if completed.returncode != 0:
            raise ValueError(f"{folder} does not load without spidr_hf:\n{completed.stderr[-3000:]}")
        released = np.load(output)
        expected_features = SpidrFeaturesPipeline(model=model, feature_extractor=feature_extractor, device="cpu")(
            probe, sampling_rate=SAMPLING_RATE, layer=layer
        )["features"]
        expected_units = SpidrUnitsPipeline(model=model, feature_extractor=feature_extractor, device="cpu")(
            probe, sampling_rate=SAMPLING_RATE, layer=layer
        )["units"]
    if not np.allclose(released["features"], expected_features, rtol=1e-4, atol=1e-5):
        difference = np.abs(released["features"] - expected_features).max()
        raise ValueError(f"{folder} gives other features than the source model (max difference {difference:.3g}).")
    if not np.array_equal(released["units"], expected_units):
        raise ValueError(f"{folder} gives other units than the source model.")


def assemble_release(model_dir: Path, destination: Path, options: CardOptions) -> Path:
    """Build the release folder of the model saved in `model_dir` at `destination` and check it."""
    model, feature_extractor = load_source(model_dir)
    card = render_model_card(model.config, options)
    write_release_folder(model, feature_extractor, card, destination)
    layer = recommended_layer(model.config, official_entry(options.official, model.config))
    check_release_folder(destination, model, feature_extractor, layer)
    return destination
