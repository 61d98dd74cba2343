"""
Hub release folders: weights, remote code, custom pipelines and a model card, checked by loading the folder in a
fresh interpreter that cannot import `spidr_hf`.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import AutoConfig
from transformers.dynamic_module_utils import custom_object_save

from . import release_check
from .configuration_spidr import SpidrConfig
from .evaluation.schema import METRICS, REPRESENTATIONS, SYSTEMS
from .feature_extraction_spidr import SpidrFeatureExtractor
from .modeling_spidr import SpidrForPreTraining
from .pipeline_spidr import (
    DEFAULT_CHUNK_LENGTH_S,
    DEFAULT_LAYER,
    DEFAULT_STRIDE_LENGTH_S,
    SpidrFeaturesPipeline,
    SpidrUnitsPipeline,
    custom_pipelines,
)

# The templates live beside the sources, in the repository's model_cards/ folder.
MODEL_CARDS_DIR = Path(__file__).resolve().parents[2] / "model_cards"
CARD_TAGS = ["audio", "speech", "self-supervised-learning", "speech-representation", "discrete-units"]
PROBE_SECONDS = 2.0
CHECK_TIMEOUT_S = 900

MODEL_INDEX_METRICS = ("abx_within", "abx_across", "pnmi")  # the unit-quality figures the paper reports


@dataclass(frozen=True)
class CardOptions:
    """What the model card says beyond what the model config tells."""

    repo_id: str
    official: str | None = None  # name of an entry of model_cards/official.toml
    license: str | None = None  # Hub license id; official checkpoints bring theirs
    datasets: tuple[str, ...] = ()
    base_model: str | None = None
    evaluation: Path | None = None


def official_checkpoints() -> dict[str, dict[str, Any]]:
    """The official checkpoints with a ready-made card (model_cards/official.toml)."""
    return tomllib.loads((MODEL_CARDS_DIR / "official.toml").read_text(encoding="utf-8"))


def official_entry(name: str | None, config: SpidrConfig) -> dict[str, Any] | None:
    """The card entry `name` (None for none), checked against the model's config."""
    if name is None:
        return None
    checkpoints = official_checkpoints()
    if name not in checkpoints:
        raise ValueError(f"Unknown official checkpoint {name!r}; known: {sorted(checkpoints)}.")
    entry = checkpoints[name]
    mismatches = {
        key: (getattr(config, key), value)
        for key, value in entry["expected_config"].items()
        if getattr(config, key) != value
    }
    if mismatches:
        details = ", ".join(f"{key}={ours!r} (expected {theirs!r})" for key, (ours, theirs) in mismatches.items())
        raise ValueError(f"The model is not the {name} checkpoint: {details}.")
    return entry


def recommended_layer(config: SpidrConfig, official: dict[str, Any] | None) -> int:
    """The layer the card recommends: the paper's for official checkpoints, else layer 6 when it has a codebook."""
    if official is not None:
        return official["layer"]
    return DEFAULT_LAYER if DEFAULT_LAYER in config.codebook_layers else config.codebook_layers[0]


def load_evaluation(path: Path) -> dict[str, Any]:
    """Read and check an evaluation JSON written by `spidr-hf evaluate`."""
    try:
        evaluation = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read the evaluation JSON {path}: {error}") from error
    expected = {"model": str, "dataset": str, "split": str, "num_abx_tokens": int, "results": list}
    if not isinstance(evaluation, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(evaluation).__name__}.")
    for key, kind in expected.items():
        if not isinstance(evaluation.get(key), kind):
            raise ValueError(f"{path}: {key!r} must be a {kind.__name__}, got {evaluation.get(key)!r}.")
    for index, row in enumerate(evaluation["results"]):
        _check_result_row(row, f"{path}: results[{index}]")
    return evaluation


def _check_result_row(row: Any, where: str) -> None:
    choices = {
        "system": SYSTEMS,
        "representation": REPRESENTATIONS,
        "metric": tuple(METRICS),
    }
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be an object, got {row!r}.")
    for key, allowed in choices.items():
        if row.get(key) not in allowed:
            raise ValueError(f"{where}: {key!r} must be one of {allowed}, got {row.get(key)!r}.")
    if row.get("layer") is not None and not isinstance(row["layer"], int):
        raise ValueError(f"{where}: 'layer' must be an integer or null, got {row['layer']!r}.")
    value = row.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{where}: 'value' must be a finite number, got {value!r}.")


def evaluation_table(evaluation: dict[str, Any]) -> dict[str, Any]:
    """One row per (system, representation, layer), one column per metric, in the JSON's order."""
    metrics = [m for m in METRICS if any(r["metric"] == m for r in evaluation["results"])]
    cells: dict[tuple[str, str, Any], dict[str, float]] = {}
    for result in evaluation["results"]:
        key = (result["system"], result["representation"], result["layer"])
        cells.setdefault(key, {})[result["metric"]] = result["value"]
    rows = [
        {
            "system": system,
            "representation": representation,
            "layer": "-" if layer is None else layer,
            "cells": [format(values[m], METRICS[m][1]) if m in values else "-" for m in metrics],
        }
        for (system, representation, layer), values in cells.items()
    ]
    return {
        "dataset": evaluation["dataset"],
        "split": evaluation["split"],
        "num_abx_tokens": evaluation["num_abx_tokens"],
        "columns": [METRICS[m][0] for m in metrics],
        "rows": rows,
    }


def evaluation_results(evaluation: dict[str, Any]) -> list[EvalResult]:
    """The model's own ABX and PNMI figures as Hub model-index entries (baselines stay in the card's table)."""
    results = []
    for result in evaluation["results"]:
        if result["system"] != "model" or result["metric"] not in MODEL_INDEX_METRICS:
            continue
        layer = "" if result["layer"] is None else f"layer {result['layer']} "
        results.append(
            EvalResult(
                task_type="feature-extraction",
                task_name="ABX" if result["metric"].startswith("abx") else "PNMI",
                dataset_type=evaluation["dataset"],
                dataset_name=evaluation["dataset"],
                dataset_split=evaluation["split"],
                metric_type=result["metric"],
                metric_value=result["value"],
                metric_name=f"{METRICS[result['metric']][0]}, {layer}{result['representation']}",
            )
        )
    return results


def render_model_card(config: SpidrConfig, options: CardOptions) -> ModelCard:
    """Render model_cards/template.md with the Hub metadata and, if given, the evaluation figures."""
    official = official_entry(options.official, config)
    if official and options.license not in (None, official["license"]):
        raise ValueError(f"The {options.official} weights are {official['license']}, not {options.license}.")
    license_id = official["license"] if official else options.license
    if license_id is None:
        raise ValueError("Say under which license the weights are released (--license), e.g. cc-by-4.0.")
    evaluation = None if options.evaluation is None else load_evaluation(options.evaluation)
    family = "SpidR" if config.objective == "spidr" else "DinoSR"
    card_data = ModelCardData(
        language=["en"],
        license=license_id,
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=[*CARD_TAGS, config.objective],
        datasets=list(official["datasets"] if official else options.datasets) or None,
        base_model=options.base_model,
        model_name=options.repo_id,
        eval_results=evaluation_results(evaluation) if evaluation else None,
    )
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    template = environment.from_string((MODEL_CARDS_DIR / "template.md").read_text(encoding="utf-8"))
    content = template.render(
        card_data=card_data.to_yaml(),
        title=official["title"] if official else options.repo_id.split("/")[-1],
        family=family,
        official=official,
        repo_id=options.repo_id,
        layer=recommended_layer(config, official),
        license=license_id,
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_codebooks=config.num_codebooks,
        codebook_size=config.codebook_size,
        codebook_layers=config.codebook_layers,
        chunk_length_s=DEFAULT_CHUNK_LENGTH_S,
        stride_length_s=DEFAULT_STRIDE_LENGTH_S,
        evaluation=evaluation_table(evaluation) if evaluation else None,
    )
    return ModelCard(content)


def load_source(model_dir: Path) -> tuple[SpidrForPreTraining, SpidrFeatureExtractor]:
    """The full model (heads and codebooks included) and the feature extractor of a saved folder."""
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise ValueError(f"{model_dir} is not a saved model folder: {error}") from error
    if not isinstance(config, SpidrConfig):
        raise ValueError(f"{model_dir} holds a {type(config).__name__}, not a SpidR/DinoSR model.")
    model, info = SpidrForPreTraining.from_pretrained(model_dir, output_loading_info=True)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"{model_dir} lacks {len(missing)} weights of the full model (e.g. {missing[:3]}): push a folder saved "
            "from SpidrForPreTraining (`spidr-hf convert` or a training run), which has the codebook heads."
        )
    # The feature extractor has no learned state: training runs that saved none use the default one
    if (model_dir / "preprocessor_config.json").is_file():
        return model.eval(), SpidrFeatureExtractor.from_pretrained(model_dir)
    return model.eval(), SpidrFeatureExtractor()


def write_release_folder(
    model: SpidrForPreTraining, feature_extractor: SpidrFeatureExtractor, card: ModelCard | None, destination: Path
) -> Path:
    """Write weights, configs, code files (pipelines included) and the card as README.md; all or nothing."""
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise ValueError(f"{destination} exists and is not an empty folder; choose a new one.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=f".{destination.name}.") as staging:
        model.config.custom_pipelines = custom_pipelines()
        model.save_pretrained(staging)
        feature_extractor.save_pretrained(staging)
        custom_object_save(SpidrFeaturesPipeline, staging)  # copies pipeline_spidr.py (and what it imports)
        if card is not None:
            card.save(Path(staging) / "README.md")
        _permissions_from_umask(Path(staging))
        if destination.exists():
            destination.rmdir()
        shutil.move(staging, destination)
        Path(staging).mkdir()  # the context manager removes it again
    return destination


def _permissions_from_umask(folder: Path) -> None:
    """The modes a plain mkdir and open would give, where the private temporary folder and files gave 0700/0600."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def probe_signal() -> np.ndarray:
    """A fixed 16 kHz test signal: a chirp in noise."""
    time = np.arange(int(PROBE_SECONDS * 16000)) / 16000
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
            probe, sampling_rate=16000, layer=layer
        )["features"]
        expected_units = SpidrUnitsPipeline(model=model, feature_extractor=feature_extractor, device="cpu")(
            probe, sampling_rate=16000, layer=layer
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
