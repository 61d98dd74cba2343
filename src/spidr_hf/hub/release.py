"""
Hub release folders: weights, remote code, custom pipelines and the model card (`model_card.py`) written all or nothing,
then checked by loading the folder in a fresh interpreter that cannot import `spidr_hf` (`release_check.py`).
"""

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import ModelCard

from ..io.atomic_files import new_folder
from ..model.configuration_spidr import SAMPLING_RATE
from ..model.feature_extraction_spidr import SpidrFeatureExtractor
from ..model.loading import LoadedFinetuned, finetuned_head, load, load_config, load_finetuned
from ..model.modeling_spidr import HEAD_AUTO_CLASSES, HEAD_PIPELINE_TASKS, SpidrForPreTraining
from ..model.pipeline_spidr import SpidrFeaturesPipeline, SpidrUnitsPipeline
from . import release_check
from .folder import save_hub_ready
from .model_card import CardOptions, official_entry, recommended_layer, render_finetuned_card, render_model_card

PROBE_SECONDS = 2.0
CHECK_TIMEOUT_S = 900


def load_source(model_dir: Path) -> tuple[SpidrForPreTraining, SpidrFeatureExtractor]:
    """The full model (heads and codebooks included) and the feature extractor of a saved folder."""
    loaded = load(model_dir, "full", require_heads=True)
    return loaded.model.eval(), loaded.feature_extractor


def write_release_folder(
    model,
    feature_extractor: SpidrFeatureExtractor,
    card: ModelCard | None,
    destination: Path,
    tokenizer: object | None = None,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """
    Write weights, configs, the tokenizer if any, code files (pipelines included) and the card as README.md; all or
    nothing. `check(staging)` runs on the complete folder before it is renamed into place: a folder that fails its
    check, or whose check is cut, never appears.
    """
    with new_folder(destination) as staging:
        save_hub_ready(model, staging, feature_extractor, tokenizer)
        if card is not None:
            card.save(staging / "README.md")
        if check is not None:
            check(staging)
    return destination


def probe_signal() -> np.ndarray:
    """A fixed test signal at the model's sampling rate: a chirp in noise."""
    time = np.arange(int(PROBE_SECONDS * SAMPLING_RATE)) / SAMPLING_RATE
    noise = np.random.default_rng(0).standard_normal(time.size)
    return (np.sin(2 * np.pi * (200 + 400 * time) * time) + 0.1 * noise).astype(np.float32)


def check_release_folder(
    folder: Path,
    model: SpidrForPreTraining,
    feature_extractor: SpidrFeatureExtractor,
    layer: int,
    scratch_in: Path | None = None,
) -> None:
    """
    Load `folder` with AutoModel, AutoFeatureExtractor and both pipelines in a fresh interpreter that cannot import
    spidr_hf, and check that it gives the source model's features and units on a probe signal.
    """
    probe = probe_signal()
    released = _run_release_check(folder, ["pretrained", str(layer)], scratch_in)
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


def _die_with_parent() -> None:
    """Run in the check's child before it starts: on Linux, it gets SIGKILL when its parent dies (a killed `push`
    leaves no orphan behind)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _run_release_check(folder: Path, arguments: list[str], scratch_in: Path | None) -> dict[str, np.ndarray]:
    """What `release_check.py FOLDER PROBE OUT *arguments` wrote of the probe signal, run without spidr_hf."""
    # In a staging folder, the scratch goes inside it: gone with it, also after a SIGKILL (the next run removes it)
    with tempfile.TemporaryDirectory(dir=scratch_in, prefix=".spidr-release-check-") as scratch_name:
        # Absolute: the check runs in the scratch folder, where a path relative to ours (runs/...) would not resolve
        scratch = Path(scratch_name).resolve()
        np.save(scratch / "probe.npy", probe_signal())
        output = scratch / "output.npz"
        # Offline, with an empty remote-code cache: only the folder itself can provide the code
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(scratch / "modules")}
        command = [sys.executable, "-I", release_check.__file__, str(folder.resolve()), str(scratch / "probe.npy")]
        try:
            completed = subprocess.run(
                [*command, str(output), *arguments],
                env=environment,
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT_S,
                preexec_fn=_die_with_parent,
            )
        except subprocess.TimeoutExpired as error:
            raise ValueError(f"Loading {folder} without spidr_hf took over {CHECK_TIMEOUT_S} s.") from error
        if completed.returncode != 0:
            raise ValueError(f"{folder} does not load without spidr_hf:\n{completed.stderr[-3000:]}")
        with np.load(output) as released:
            return dict(released)


def assemble_release(model_dir: Path, destination: Path, options: CardOptions) -> Path:
    """Build the release folder of the model saved in `model_dir` (pretrained or fine-tuned) at `destination`, and
    check it."""
    if finetuned_head(load_config(model_dir).config) is not None:
        return assemble_finetuned_release(model_dir, destination, options)
    model, feature_extractor = load_source(model_dir)
    card = render_model_card(model.config, options)
    layer = recommended_layer(model.config, official_entry(options.official, model.config))
    return write_release_folder(
        model,
        feature_extractor,
        card,
        destination,
        check=lambda staging: check_release_folder(staging, model, feature_extractor, layer, scratch_in=staging),
    )


def assemble_finetuned_release(model_dir: Path, destination: Path, options: CardOptions) -> Path:
    """The release folder of a fine-tuned model (`training/finetune.py`): weights, processor, code and card."""
    loaded = load_finetuned(model_dir)
    card = render_finetuned_card(loaded.model.config, options, _metrics(model_dir), loaded.tokenizer)
    return write_release_folder(
        loaded.model,
        loaded.feature_extractor,
        card,
        destination,
        loaded.tokenizer,
        check=lambda staging: check_finetuned_folder(staging, loaded, scratch_in=staging),
    )


def _metrics(model_dir: Path) -> dict[str, float]:
    """The evaluation figures `training/finetune.py` saved (`eval_results.json`), without the timings."""
    import json

    path = model_dir / "eval_results.json"
    if not path.is_file():
        return {}
    figures = json.loads(path.read_text())
    timings = ("runtime", "samples_per_second", "steps_per_second", "epoch")
    return {
        name.removeprefix("eval_"): value
        for name, value in figures.items()
        if isinstance(value, int | float) and not name.removeprefix("eval_").endswith(timings)
    }


def check_finetuned_folder(folder: Path, source: LoadedFinetuned, scratch_in: Path | None = None) -> None:
    """
    Load the fine-tuned `folder` with its Auto class and its transformers pipeline in a fresh interpreter that cannot
    import spidr_hf, and check that they give the source model's outputs on a probe signal.
    """
    import json

    from transformers import pipeline

    head = type(source.model).__name__
    task = HEAD_PIPELINE_TASKS.get(head, "")
    released = _run_release_check(folder, ["finetuned", HEAD_AUTO_CLASSES[head], task], scratch_in)
    probe = probe_signal()
    inputs = source.feature_extractor(probe, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    with torch.no_grad():
        output = source.model(**inputs)
    expected = output.embeddings if head == "SpidrForXVector" else output.logits
    if not np.allclose(released["outputs"], expected.float().numpy(), rtol=1e-4, atol=1e-5):
        difference = np.abs(released["outputs"] - expected.float().numpy()).max()
        raise ValueError(f"{folder} gives other outputs than the source model (max difference {difference:.3g}).")
    if task:
        tokenizer = {"tokenizer": source.tokenizer} if source.tokenizer is not None else {}
        ours = pipeline(task, model=source.model, feature_extractor=source.feature_extractor, device="cpu", **tokenizer)
        if not _same_pipeline_output(json.loads(str(released["pipeline"])), ours(probe)):
            raise ValueError(f"The {task} pipeline of {folder} gives other results than the source model.")


def _same_pipeline_output(released, expected) -> bool:
    if isinstance(expected, dict):  # speech recognition: the text
        return released == expected
    return [item["label"] for item in released] == [item["label"] for item in expected] and np.allclose(
        [item["score"] for item in released], [item["score"] for item in expected], rtol=1e-4, atol=1e-6
    )
