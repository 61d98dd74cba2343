"""
Model cards of released folders: the template and the official checkpoints' entries shipped in `spidr_hf/model_cards/`,
the Hub metadata, and the figures of a `spidr-hf evaluate` report as a table and a model-index.
"""

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..evaluation.schema import METRICS, EvaluationReport
from ..model.configuration_spidr import SpidrConfig
from ..model.modeling_spidr import HEAD_AUTO_CLASSES, HEAD_PIPELINE_TASKS
from ..model.pipeline_spidr import DEFAULT_CHUNK_LENGTH_S, DEFAULT_STRIDE_LENGTH_S
from .checkpoint_sources import shown_origin

CARD_TAGS = ["audio", "speech", "self-supervised-learning", "speech-representation", "discrete-units"]
MODEL_INDEX_METRICS = ("abx_within", "abx_across", "pnmi")  # the unit-quality figures the paper reports
# The license ids the Hub knows (https://huggingface.co/docs/hub/repositories-licenses); huggingface_hub ships no list.
# An id outside it is not recognized by the Hub; a license that is not listed is `other`.
HUB_LICENSE_IDS = frozenset(
    [
        "apache-2.0",
        "mit",
        "openrail",
        "bigscience-openrail-m",
        "creativeml-openrail-m",
        "bigscience-bloom-rail-1.0",
        "bigcode-openrail-m",
        "afl-3.0",
        "artistic-2.0",
        "bsl-1.0",
        "bsd",
        "bsd-2-clause",
        "bsd-3-clause",
        "bsd-3-clause-clear",
        "c-uda",
        "cc",
        "cc0-1.0",
        "cc-by-2.0",
        "cc-by-2.5",
        "cc-by-3.0",
        "cc-by-4.0",
        "cc-by-sa-3.0",
        "cc-by-sa-4.0",
        "cc-by-nc-2.0",
        "cc-by-nc-3.0",
        "cc-by-nc-4.0",
        "cc-by-nd-4.0",
        "cc-by-nc-nd-3.0",
        "cc-by-nc-nd-4.0",
        "cc-by-nc-sa-2.0",
        "cc-by-nc-sa-3.0",
        "cc-by-nc-sa-4.0",
        "cdla-sharing-1.0",
        "cdla-permissive-1.0",
        "cdla-permissive-2.0",
        "wtfpl",
        "ecl-2.0",
        "epl-1.0",
        "epl-2.0",
        "etalab-2.0",
        "eupl-1.1",
        "agpl-3.0",
        "gfdl",
        "gpl",
        "gpl-2.0",
        "gpl-3.0",
        "lgpl",
        "lgpl-2.1",
        "lgpl-3.0",
        "isc",
        "lppl-1.3c",
        "ms-pl",
        "mpl-2.0",
        "odc-by",
        "odbl",
        "openrail++",
        "osl-3.0",
        "postgresql",
        "ofl-1.1",
        "ncsa",
        "unlicense",
        "zlib",
        "pddl",
        "lgpl-lr",
        "deepfloyd-if-license",
        "llama2",
        "gemma",
        "unknown",
        "other",
    ]
)


def check_license_id(license_id: str) -> str:
    """`license_id` if the Hub knows it, else a one-line error naming the closest id."""
    if license_id not in HUB_LICENSE_IDS:
        closest = difflib.get_close_matches(license_id.lower(), HUB_LICENSE_IDS, n=1)
        hint = f"did you mean {closest[0]!r}? " if closest else ""
        raise ValueError(
            f"{license_id!r} is not a Hub license id: {hint}see https://huggingface.co/docs/hub/repositories-licenses "
            "(use 'other' for a license that is not listed)."
        )
    return license_id


def _card_file(name: str) -> str:
    """A file of the package's model_cards/ folder (package data, so that an installed wheel has it too)."""
    return (files(__package__) / "model_cards" / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class CardOptions:
    """What the model card says beyond what the model config tells."""

    repo_id: str
    official: str | None = None  # name of an entry of model_cards/official.toml
    license: str | None = None  # Hub license id; official checkpoints bring theirs
    datasets: tuple[str, ...] = ()
    base_model: str | None = None
    evaluation: Path | None = None  # results.json of `spidr-hf evaluate`
    conversion: Mapping[str, Any] | None = None  # conversion.json of a `spidr-hf convert` folder

    def __post_init__(self) -> None:
        # Checked here so that `push` fails before any work (the model's config is checked against it later)
        if self.license is not None:
            check_license_id(self.license)
        if self.official is not None:
            official_checkpoint(self.official)


def official_checkpoints() -> dict[str, dict[str, Any]]:
    """The official checkpoints with a ready-made card (model_cards/official.toml)."""
    return tomllib.loads(_card_file("official.toml"))


def official_checkpoint(name: str) -> dict[str, Any]:
    """The card entry of the official checkpoint `name`; an unknown name is a one-line error listing the known ones."""
    checkpoints = official_checkpoints()
    if name not in checkpoints:
        raise ValueError(f"Unknown official checkpoint {name!r}; known: {sorted(checkpoints)}.")
    return checkpoints[name]


def official_entry(name: str | None, config: SpidrConfig) -> dict[str, Any] | None:
    """The card entry `name` (None for none), checked against the model's config."""
    if name is None:
        return None
    entry = official_checkpoint(name)
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
    return config.default_unit_layer


def evaluation_table(report: EvaluationReport) -> dict[str, Any]:
    """The template's evaluation table: one row per (system, representation, layer), one column per metric."""
    metrics = report.metrics()
    rows = [
        {
            "system": system,
            "representation": representation,
            "layer": "-" if layer is None else layer,
            "cells": [format(values[m], METRICS[m].format) if m in values else "-" for m in metrics],
        }
        for (system, representation, layer), values in report.table().items()
    ]
    return {
        "dataset": report.dataset,
        "split": report.split,
        "num_abx_tokens": report.num_abx_tokens,
        "stored_kmeans_layer": report.stored_kmeans_layer,
        "columns": [METRICS[m].label for m in metrics],
        "rows": rows,
    }


def evaluation_results(report: EvaluationReport) -> list[EvalResult]:
    """The model's own ABX and PNMI figures as Hub model-index entries (baselines stay in the card's table)."""
    results = []
    for result in report.results:
        if result.system != "model" or result.metric not in MODEL_INDEX_METRICS:
            continue
        layer = "" if result.layer is None else f"layer {result.layer} "
        results.append(
            EvalResult(
                task_type="feature-extraction",
                task_name="ABX" if result.metric.startswith("abx") else "PNMI",
                dataset_type=report.dataset,
                dataset_name=report.dataset,
                dataset_split=report.split,
                metric_type=result.metric,
                metric_value=result.value,
                metric_name=f"{METRICS[result.metric].label}, {layer}{result.representation}",
            )
        )
    return results


def conversion_facts(record: Mapping[str, Any]) -> dict[str, str | None]:
    """What a card says of a converted model's source: the files read (a local file by its name) and their SHA-256."""
    config = record.get("config")
    return {
        "checkpoint": shown_origin(record["checkpoint"]["origin"]),
        "sha256": record["checkpoint"]["sha256"],
        "config": None if config is None else shown_origin(config["origin"]),
        "config_sha256": None if config is None else config["sha256"],
    }


def render_model_card(config: SpidrConfig, options: CardOptions) -> ModelCard:
    """Render model_cards/template.md with the Hub metadata and, if given, the evaluation figures."""
    official = official_entry(options.official, config)
    if official and options.license not in (None, official["license"]):
        raise ValueError(f"The {options.official} weights are {official['license']}, not {options.license}.")
    license_id = official["license"] if official else options.license
    if license_id is None:
        raise ValueError("Say under which license the weights are released (--license), e.g. cc-by-4.0.")
    evaluation = None if options.evaluation is None else EvaluationReport.load(options.evaluation)
    if evaluation is not None and evaluation.stored_kmeans_layer not in (None, config.kmeans_layer):
        stored = "none" if config.kmeans_layer is None else f"those of layer {config.kmeans_layer}"
        raise ValueError(
            f"The evaluation {options.evaluation} scored stored k-means centroids of layer "
            f"{evaluation.stored_kmeans_layer}, but this model stores {stored}: it is another model's report; "
            "evaluate this model again"
        )
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
        eval_results=None if evaluation is None else evaluation_results(evaluation),
    )
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    template = environment.from_string(_card_file("template.md"))
    content = template.render(
        card_data=card_data.to_yaml(),
        title=official["title"] if official else options.repo_id.split("/")[-1],
        family=family,
        official=official,
        conversion=None if options.conversion is None else conversion_facts(options.conversion),
        repo_id=options.repo_id,
        layer=recommended_layer(config, official),
        license=license_id,
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_codebooks=config.num_codebooks,
        codebook_size=config.codebook_size,
        codebook_layers=config.codebook_layers,
        datasets=list(options.datasets),
        kmeans_layer=config.kmeans_layer,
        kmeans_num_clusters=config.kmeans_num_clusters,
        chunk_length_s=DEFAULT_CHUNK_LENGTH_S,
        stride_length_s=DEFAULT_STRIDE_LENGTH_S,
        evaluation=None if evaluation is None else evaluation_table(evaluation),
    )
    return ModelCard(content)


# What each fine-tuned head does, in the card's first sentence
HEAD_DESCRIPTIONS = {
    "SpidrForCTC": "speech recognition with a CTC head",
    "SpidrForSequenceClassification": "utterance classification",
    "SpidrForAudioFrameClassification": "frame classification",
    "SpidrForXVector": "speaker embeddings (x-vectors)",
}


def render_finetuned_card(
    config: SpidrConfig, options: CardOptions, metrics: dict[str, float], tokenizer: object | None
) -> ModelCard:
    """Render model_cards/finetuned.md: what the head does, its pipeline's usage, its evaluation figures."""
    if options.official is not None:
        raise ValueError("--official names a pretrained checkpoint; this is a fine-tuned model.")
    if options.evaluation is not None:
        raise ValueError(
            "--evaluation takes a `spidr-hf evaluate` report of a pretrained model; a fine-tuned model's card shows "
            "the figures `training/finetune.py` saved (eval_results.json)"
        )
    if options.license is None:
        raise ValueError("Say under which license the weights are released (--license), e.g. cc-by-4.0.")
    head = next(name for name in config.architectures if name in HEAD_DESCRIPTIONS)
    task = HEAD_PIPELINE_TASKS.get(head)
    card_data = ModelCardData(
        language=["en"],
        license=options.license,
        library_name="transformers",
        pipeline_tag=task,
        tags=["audio", "speech", config.objective],
        datasets=list(options.datasets) or None,
        base_model=options.base_model,
        model_name=options.repo_id,
    )
    labels = [] if head == "SpidrForCTC" else [config.id2label[index] for index in sorted(config.id2label)]
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    content = environment.from_string(_card_file("finetuned.md")).render(
        card_data=card_data.to_yaml(),
        title=options.repo_id.split("/")[-1],
        family="SpidR" if config.objective == "spidr" else "DinoSR",
        base_model=options.base_model,
        head=head,
        head_description=HEAD_DESCRIPTIONS[head],
        auto_class=HEAD_AUTO_CLASSES[head],
        task=task,
        phones=type(tokenizer).__name__ == "Wav2Vec2PhonemeCTCTokenizer",
        labels=labels,
        use_weighted_layer_sum=config.use_weighted_layer_sum,
        weighted_layer_representation=config.weighted_layer_representation,
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        repo_id=options.repo_id,
        license=options.license,
        metrics={name: f"{value:.4g}" for name, value in metrics.items()},
    )
    return ModelCard(content)
