"""Evaluate a SpidR model's layers and units on a phone-aligned corpus, beside log-mel and random-init baselines."""

import logging
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.aligned_speech import Utterance, load_random_audio, load_split
from ..defaults import ABX_MAX_SIZE_GROUP, ABX_MAX_X_ACROSS, BATCH_SIZE, EVALUATE_KMEANS_FRAMES, NUM_CLUSTERS
from ..errors import SpidrError
from ..model.loading import DTYPES, LoadedModel, check_device, in_dtype, load, load_config
from ..model.modeling_spidr import UNIT_KINDS
from ..model.representations import ModelRepresentations
from ..units.kmeans import fit_kmeans, kmeans_training_frames
from ..units.stored_kmeans import StoredKMeans
from .abx import abx_error
from .features import LogMelRepresentations, batches
from .items import FRAME_RATE, HOP_SAMPLES, ITEM_FILE, WINDOW_SAMPLES, AbxItem, frame_span, num_frames, read_item_file
from .schema import EvaluationReport, EvaluationResult, Representation, Row, System
from .standard import describe_set, draw_kmeans_audio, load_item_set
from .units_quality import LABEL_RATE, UNIT_RATE, cooccurrence, frame_labels, units_quality

logger = logging.getLogger(__name__)

SPLIT = "dev"


@dataclass(frozen=True)
class Settings:
    """Evaluation knobs shared by every system (see `evaluate_model`)."""

    num_clusters: int
    kmeans_frames: int
    batch_size: int
    max_size_group: int | None
    max_x_across: int | None
    seed: int

    def __post_init__(self) -> None:
        for name in ("num_clusters", "kmeans_frames", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class Tokens:
    """ABX tokens of the dev utterances: utterance index and frame span, and labels."""

    utterance: list[int]
    start: list[int]
    end: list[int]
    phones: list[str]
    contexts: list[tuple[str, str]]
    speakers: list[str]

    def __post_init__(self) -> None:
        self._by_utterance: dict[int, list[int]] = {}
        for token, utterance in enumerate(self.utterance):
            self._by_utterance.setdefault(utterance, []).append(token)

    def by_utterance(self, index: int) -> list[int]:
        return self._by_utterance.get(index, [])


def dev_tokens(utterances: Sequence[Utterance], items: Sequence[AbxItem], subset: bool) -> Tokens:
    """Frame spans of the items; items of utterances left out by a `subset` are dropped, otherwise they are errors."""
    index = {utterance.id: position for position, utterance in enumerate(utterances)}
    fields: dict[str, list] = {name: [] for name in ("utterance", "start", "end", "phones", "contexts", "speakers")}
    for item in items:
        if item.file not in index:
            if subset:
                continue
            raise ValueError(f"The item file names {item.file!r}, which is not in the {SPLIT} split")
        position = index[item.file]
        start, end = frame_span(item.onset, item.offset, FRAME_RATE)
        if start >= end:
            raise ValueError(f"Item {item.file} {item.onset} {item.offset} contains no 20 ms frame centre")
        if end > num_frames(len(utterances[position].audio)):
            raise ValueError(f"Item {item.file} {item.onset} {item.offset} extends beyond the audio of {item.file}")
        for name, value in zip(
            fields, (position, start, end, item.phone, (item.prev_phone, item.next_phone), item.speaker), strict=True
        ):
            fields[name].append(value)
    if not fields["utterance"]:
        raise ValueError("No ABX item falls in the evaluated utterances")
    return Tokens(**fields)


def check_layers(layers: Sequence[int] | None, config) -> list[int]:
    """The requested 1-based layers, sorted (all of them when None), each checked by the config."""
    if layers is None:
        return list(range(1, config.num_hidden_layers + 1))
    if not layers:
        raise SpidrError("No layer to evaluate: give at least one")
    return sorted({config.check_layer(layer) for layer in layers})


class EvaluationSource:
    """What a model is evaluated on: dev utterances with their ABX items, and audio to fit k-means on."""

    name: str  # the report's `dataset`
    split: str  # the report's `split`

    def load(self, max_utterances: int | None, seed: int) -> tuple[list[Utterance], list[AbxItem]]:
        raise NotImplementedError

    def kmeans_audio(self, dev: Sequence[Utterance], max_seconds: float, seed: int) -> list[np.ndarray]:
        raise NotImplementedError


class CorpusSource(EvaluationSource):
    """A `spidr-hf corpus` folder (or a dataset saved the same way): its dev split and dev.item, k-means on train."""

    def __init__(self, dataset_dir: str | os.PathLike) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.name, self.split = str(dataset_dir), SPLIT

    def load(self, max_utterances: int | None, seed: int) -> tuple[list[Utterance], list[AbxItem]]:
        return load_split(self.dataset_dir, SPLIT, max_utterances, seed), read_item_file(self.dataset_dir / ITEM_FILE)

    def kmeans_audio(self, dev: Sequence[Utterance], max_seconds: float, seed: int) -> list[np.ndarray]:
        return load_random_audio(self.dataset_dir, "train", max_seconds, seed)


class ItemSetSource(EvaluationSource):
    """A ZeroSpeech-layout set: an ABX item file, the audio folder it names files of, optional alignments."""

    def __init__(
        self,
        item_file: str | os.PathLike,
        audio_dir: str | os.PathLike,
        alignments: str | os.PathLike | None,
        kmeans_audio_dir: str | os.PathLike | None,
    ) -> None:
        self.item_file, self.audio_dir = item_file, audio_dir
        self.alignments, self.kmeans_audio_dir = alignments, kmeans_audio_dir
        self.name, self.split = describe_set(item_file, audio_dir)

    def load(self, max_utterances: int | None, seed: int) -> tuple[list[Utterance], list[AbxItem]]:
        return load_item_set(self.item_file, self.audio_dir, self.alignments, max_utterances, seed)

    def kmeans_audio(self, dev: Sequence[Utterance], max_seconds: float, seed: int) -> list[np.ndarray]:
        return draw_kmeans_audio(dev, self.kmeans_audio_dir, max_seconds, seed)


def evaluation_source(
    dataset: str | os.PathLike | None,
    item_file: str | os.PathLike | None,
    audio_dir: str | os.PathLike | None,
    alignments: str | os.PathLike | None,
    kmeans_audio_dir: str | os.PathLike | None,
) -> EvaluationSource:
    """What to evaluate on: a corpus folder, or an item file with its audio folder (and their options), not both."""
    standard = [item_file, audio_dir, alignments, kmeans_audio_dir]
    if dataset is not None and any(value is not None for value in standard):
        raise SpidrError(
            "Evaluate either on a corpus folder (dataset) or on a ZeroSpeech-layout set (item file, audio folder, "
            "alignments, k-means audio), not both"
        )
    if dataset is not None:
        return CorpusSource(dataset)
    if item_file is None or audio_dir is None:
        raise SpidrError(
            "Evaluate on a corpus folder (--dataset DIR) or on an ABX item file and its audio (--item FILE --audio DIR)"
        )
    return ItemSetSource(item_file, audio_dir, alignments, kmeans_audio_dir)


@dataclass(frozen=True)
class KMeansPlan:
    """
    Decided before any work: which layers' k-means units come from the model's stored centroids, and how many units
    each (kind, layer) has (k-means clusters to fit; layer None: log-mel).
    """

    stored: dict[int, StoredKMeans]
    num_units: dict[tuple[str, int | None], int]


def plan_kmeans(
    student,
    unit_kinds: Sequence[str],
    layers: Sequence[int],
    codebook_layers: Sequence[int],
    settings: Settings,
    refit: bool,
) -> KMeansPlan:
    stored = {}
    config = student.config
    if "kmeans" in unit_kinds and student.kmeans is not None and not refit:
        if config.kmeans_layer not in layers:
            logger.warning("The model's k-means centroids are of layer %d, which is not evaluated", config.kmeans_layer)
        else:
            stored = {config.kmeans_layer: StoredKMeans(student.kmeans)}
            if config.kmeans_num_clusters != settings.num_clusters:
                logger.warning(
                    "Layer %d's k-means units are the model's %d stored centroids (and its random initialisation's "
                    "k-means has as many), not %d clusters; --refit-kmeans fits every layer",
                    config.kmeans_layer,
                    config.kmeans_num_clusters,
                    settings.num_clusters,
                )
    num_units = {("codebook", layer): config.codebook_size for layer in codebook_layers}
    num_units |= {("kmeans", layer): settings.num_clusters for layer in [*layers, None]}
    num_units |= {("kmeans", layer): kmeans.num_clusters for layer, kmeans in stored.items()}
    most_clusters = max(num_units["kmeans", layer] for layer in layers)
    if "kmeans" in unit_kinds and settings.kmeans_frames < most_clusters:  # found now, not after the model's scores
        raise SpidrError(f"kmeans_frames ({settings.kmeans_frames}) must be at least the clusters ({most_clusters})")
    return KMeansPlan(stored, num_units)


def check_frame_geometry(config) -> None:
    """The ABX items, alignments and log-mel baseline are on 20 ms frames of a 25 ms window: so must the model be."""
    if (config.inputs_to_logits_ratio, config.receptive_field) != (HOP_SAMPLES, WINDOW_SAMPLES):
        raise SpidrError(
            f"The model's frames ({config.frame_rate:g} Hz, {config.receptive_field}-sample receptive field) are not "
            f"the evaluation's ({FRAME_RATE} Hz, {WINDOW_SAMPLES} samples): its ABX tokens would be misaligned"
        )


def check_output(output: Path, overwrite: bool) -> None:
    """Before any work: the report folder can be written and holds no earlier report, unless it may be replaced."""
    from .report import RESULTS_FILE  # matplotlib only when a report is written

    if output.exists() and not output.is_dir():
        raise SpidrError(f"The report folder {output} is a file; the report needs a folder")
    if (output / RESULTS_FILE).exists() and not overwrite:
        raise SpidrError(
            f"{output} already holds a report ({RESULTS_FILE}); pass --overwrite to replace it, or choose another "
            "folder"
        )
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SpidrError(f"Cannot create the report folder {output}: {error.strerror}") from error
    if not os.access(output, os.W_OK):
        raise SpidrError(f"Cannot write the report into {output}: permission denied")


def load_for_units(
    name: str | os.PathLike, units: Sequence[str] | None, dtype: str = "float32"
) -> tuple[LoadedModel, list[str]]:
    """
    The model to evaluate and the unit kinds to evaluate: the full model (with the codebook heads) when codebook
    units are evaluated, else the student, loaded in `dtype`. `units=None` picks codebook units when the checkpoint has
    trained heads, k-means otherwise, and k-means units too when the model stores k-means centroids.
    """
    unknown = set(units or ()) - set(UNIT_KINDS)
    if unknown:
        raise SpidrError(f"Unknown unit kind(s) {sorted(unknown)}: choose among {list(UNIT_KINDS)}")
    if units is not None and "codebook" not in units:
        return load(name, "student", dtype=dtype), list(units)
    loaded = load(name, "as_saved", dtype=dtype)
    if units is None:
        units = ["codebook"] if loaded.has_heads else []
        if not loaded.has_heads or loaded.student.kmeans is not None:
            units.append("kmeans")
    elif not loaded.has_heads:
        raise SpidrError(f"{name} has no trained codebook heads: evaluate k-means units instead")
    if "codebook" not in units:
        loaded = LoadedModel(loaded.student, loaded.feature_extractor, loaded.has_heads)
    return loaded, list(units)


def evaluate_model(
    model: str | os.PathLike,
    dataset: str | os.PathLike | None = None,
    *,
    item_file: str | os.PathLike | None = None,
    audio_dir: str | os.PathLike | None = None,
    alignments: str | os.PathLike | None = None,
    kmeans_audio_dir: str | os.PathLike | None = None,
    layers: Sequence[int] | None = None,
    units: Sequence[str] | None = None,
    num_clusters: int = NUM_CLUSTERS,
    kmeans_frames: int = EVALUATE_KMEANS_FRAMES,
    batch_size: int = BATCH_SIZE,
    max_utterances: int | None = None,
    max_size_group: int | None = ABX_MAX_SIZE_GROUP,
    max_x_across: int | None = ABX_MAX_X_ACROSS,
    seed: int = 0,
    device: str | None = None,
    dtype: str = "float32",
    refit_kmeans: bool = False,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> EvaluationReport:
    """
    ABX (layer results and units) and unit quality, for the model, its random initialisation and log-mel features, on
    either the dev split of `dataset` (a `spidr-hf corpus` folder or any dataset saved the same way, with its
    `dev.item`), or a ZeroSpeech-layout set: the ABX `item_file` and the `audio_dir` holding the files it names (see
    `standard.load_item_set`). A standard set gets unit quality (PNMI, purities, bitrate, ...) only with
    `alignments`: a folder of Praat TextGrid files with a "phones" tier, or a `file start end phone` TSV/CSV.

    Returns the figures as an `EvaluationReport`; with `output_dir`, also writes it as results.json with PNG plots
    there (checked before any work: a folder with an earlier report is refused unless `overwrite`).

    Args:
        layers: 1-based layers to evaluate (all by default).
        units: "codebook" (argmax of the codebook heads) and/or "kmeans" (k-means on train-split layer results);
            by default codebook units if the checkpoint has trained heads, else k-means, and k-means too when the
            model stores centroids.
        num_clusters, kmeans_frames: k-means clusters, and frames to fit them on: from the train split of
            `dataset`; for a standard set, from the audio files of `kmeans_audio_dir`, or else of the set itself.
            The model's k-means units of the layer it stores centroids of (`spidr-hf kmeans`) come from those
            centroids, the units its pipeline gives, unless `refit_kmeans`; its random initialisation's k-means
            units of that layer then have as many clusters as the stored ones.
        batch_size: utterances per forward pass.
        max_utterances: evaluate a seeded random subset of the dev utterances.
        max_size_group, max_x_across, seed: ABX subsampling (see `abx_error`); the seed also draws the k-means
            training utterances, the k-means initialisation and the random-init baseline.
        device: torch device (default: cuda when available).
        dtype: "float32" or "bfloat16", the dtype the model and its random initialisation run in; features are
            cast to float32 after the forward pass, so ABX and k-means work in float32 either way.
    """
    source = evaluation_source(dataset, item_file, audio_dir, alignments, kmeans_audio_dir)
    settings = Settings(num_clusters, kmeans_frames, batch_size, max_size_group, max_x_across, seed)
    device = check_device(device)
    if max_utterances is not None and max_utterances < 1:
        raise SpidrError(f"max_utterances must be positive, got {max_utterances}")
    if output_dir is not None:
        check_output(Path(output_dir), overwrite)
    layers = check_layers(layers, load_config(model).config)  # before the weights load
    loaded, unit_kinds = load_for_units(model, units, dtype)
    model_obj, student, feature_extractor = loaded.model, loaded.student, loaded.feature_extractor
    check_frame_geometry(student.config)
    codebook_layers = []
    if "codebook" in unit_kinds:
        codebook_layers = [layer for layer in layers if layer in student.config.codebook_layers]
        if not codebook_layers:
            raise SpidrError(
                f"None of layers {layers} has a codebook head (layers with one: {list(student.config.codebook_layers)})"
            )
    plan = plan_kmeans(student, unit_kinds, layers, codebook_layers, settings, refit_kmeans)
    dev, items = source.load(max_utterances, settings.seed)
    kmeans_audio = []
    if "kmeans" in unit_kinds:
        kmeans_audio = source.kmeans_audio(dev, settings.kmeans_frames / student.config.frame_rate + 1, settings.seed)
    tokens = dev_tokens(dev, items, subset=max_utterances is not None)
    torch.manual_seed(settings.seed)
    # Drawn in float32 then cast, as the model was: the same random weights whatever the dtype
    random_init = in_dtype(type(model_obj)(model_obj.config), DTYPES[dtype])
    systems = {
        "model": ModelRepresentations(model_obj, feature_extractor, layers, codebook_layers, device),
        "random_init": ModelRepresentations(random_init, feature_extractor, layers, codebook_layers, device),
        "log_mel": LogMelRepresentations(),
    }
    results, cooccurrences = [], {}
    for system, representations in systems.items():
        system_results, system_cooccurrences = evaluate_system(
            system,
            representations,
            dev,
            tokens,
            kmeans_audio,
            plan.num_units,
            settings,
            stored_kmeans=plan.stored if system == "model" else {},
        )
        results += system_results
        cooccurrences.update(system_cooccurrences)
    report = EvaluationReport(
        model=str(model),
        dataset=source.name,
        split=source.split,
        num_abx_tokens=len(tokens.utterance),
        results=results,
        stored_kmeans_layer=next(iter(plan.stored), None),
    )
    if output_dir is not None:
        from .report import write_report  # matplotlib only when a report is written

        write_report(report, cooccurrences, Path(output_dir))
    return report


def evaluate_system(
    system: System,
    representations,
    dev: Sequence[Utterance],
    tokens: Tokens,
    kmeans_audio: Sequence[np.ndarray],
    num_units: dict[tuple[str, int | None], int],
    settings: Settings,
    stored_kmeans: dict[int, StoredKMeans] | None = None,
) -> tuple[list[EvaluationResult], dict[Row, tuple[list, np.ndarray]]]:
    """
    Results of one system, and its phone x unit co-occurrences keyed by (system, representation, layer).
    `num_units[kind, layer]`: units of each kind and layer (k-means clusters to fit); k-means units of the layers of
    `stored_kmeans` come from those centroids, the others are fitted on `kmeans_audio` (none without it).
    """
    kmeans: dict = dict(stored_kmeans or {})
    if kmeans_audio and any(layer not in kmeans for layer in representations.layers):
        kmeans |= _fit_kmeans(system, representations, kmeans_audio, num_units, settings, skip=kmeans.keys())
    kmeans = {layer: kmeans[layer] for layer in representations.layers if layer in kmeans}  # rows in layer order
    token_frames, unit_sequences = _dev_outputs(system, representations, dev, tokens, kmeans, settings.batch_size)
    abx_options = {
        "max_size_group": settings.max_size_group,
        "max_x_across": settings.max_x_across,
        "seed": settings.seed,
    }
    results = []
    continuous = "log_mel" if system == "log_mel" else "layer_results"
    for layer in tqdm(representations.layers, desc=f"{system}: ABX on features"):
        scores = abx_error(token_frames.pop(layer), tokens.phones, tokens.contexts, tokens.speakers, **abx_options)
        results += _records(system, continuous, layer, {f"abx_{mode}": value for mode, value in scores.items()})
    cooccurrences = {}
    is_aligned = all(utterance.phones is not None for utterance in dev)  # unit quality needs phone labels
    for (kind, layer), sequences in tqdm(unit_sequences.items(), desc=f"{system}: ABX and quality of units"):
        token_units = [
            sequences[utterance][start:end]
            for utterance, start, end in zip(tokens.utterance, tokens.start, tokens.end, strict=True)
        ]
        scores = abx_error(
            token_units, tokens.phones, tokens.contexts, tokens.speakers, distance="identical", **abx_options
        )
        metrics = {f"abx_{mode}": value for mode, value in scores.items()}
        if is_aligned:
            labels = [
                frame_labels(utterance.phones, len(units) * LABEL_RATE // UNIT_RATE)
                for utterance, units in zip(dev, sequences, strict=True)
            ]
            unit_lists = [units.numpy() for units in sequences]
            metrics.update(units_quality(unit_lists, labels, num_units[kind, layer]))
            cooccurrences[system, kind, layer] = cooccurrence(unit_lists, labels, num_units[kind, layer])
        results += _records(system, kind, layer, metrics)
    return results, cooccurrences


def _fit_kmeans(
    system: str,
    representations,
    audios: Sequence[np.ndarray],
    num_units: dict[tuple[str, int | None], int],
    settings: Settings,
    skip: Collection[int],
) -> dict:
    """One k-means model per layer but those to `skip`, fitted on frames of `audios`."""
    frames = kmeans_training_frames(
        representations, audios, settings.kmeans_frames, settings.batch_size, f"{system}: k-means features"
    )
    layers = [layer for layer in representations.layers if layer not in skip]
    return {
        layer: fit_kmeans(frames.pop(layer), num_units["kmeans", layer], settings.seed)
        for layer in tqdm(layers, desc=f"{system}: fitting k-means")
    }


def _dev_outputs(
    system: str, representations, dev: Sequence[Utterance], tokens: Tokens, kmeans: dict, batch_size: int
) -> tuple[dict, dict]:
    """
    The frames of each ABX token by layer, and the unit sequence of each dev utterance by (unit kind, layer), from
    one pass over the dev split.
    """
    token_frames = {layer: [None] * len(tokens.utterance) for layer in representations.layers}
    unit_sequences = {("codebook", layer): [None] * len(dev) for layer in representations.codebook_layers}
    unit_sequences |= {("kmeans", layer): [None] * len(dev) for layer in kmeans}
    for batch in tqdm(list(batches(dev, batch_size)), desc=f"{system}: {SPLIT} features"):
        output = representations([dev[index].audio for index in batch])
        for position, index in enumerate(batch):
            for layer in representations.layers:
                features = output.features[layer][position]
                for token in tokens.by_utterance(index):
                    if tokens.end[token] > len(features):
                        raise ValueError(f"An ABX item of {dev[index].id} ends beyond its {len(features)} frames")
                    token_frames[layer][token] = features[tokens.start[token] : tokens.end[token]].clone()
                if layer in kmeans:
                    predicted = kmeans[layer].predict(features.numpy())
                    unit_sequences["kmeans", layer][index] = torch.from_numpy(predicted.astype(np.int64))
            for layer in representations.codebook_layers:
                unit_sequences["codebook", layer][index] = output.units[layer][position]
    return token_frames, unit_sequences


def _records(
    system: System, representation: Representation, layer: int | None, metrics: dict[str, float]
) -> list[EvaluationResult]:
    records = []
    for metric, value in metrics.items():
        if math.isnan(value):
            logger.warning("%s %s layer %s: no %s (no triplet to score)", system, representation, layer, metric)
            continue
        records.append(EvaluationResult(system, representation, layer, metric, value))
    return records
