"""
Convert SpidR / DinoSR checkpoints to Hub-ready Transformers folders: the reference `spidr` package's (its training
checkpoints and its torch.hub models), SpidR-Adapt's (`facebookresearch/spidr-adapt`), and the original fairseq DinoSR.
Where they are read from (a file, a URL, a Hub repository, a reference hub name): `checkpoint_sources.py`.
"""

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData

from ..io.atomic_files import check_writable, new_folder
from ..model.configuration_spidr import OBJECTIVES, SpidrConfig
from ..model.feature_extraction_spidr import SpidrFeatureExtractor
from ..model.modeling_spidr import SpidrForPreTraining
from .checkpoint_sources import ConversionError, FetchedCheckpoint, fetch_checkpoint, file_sha256, shown_origin
from .folder import save_hub_ready

CONVERSION_RECORD = "conversion.json"  # what a converted folder was read from, and what was left out


# Reference key pattern -> our key, applied in order (each rule to the result of the previous ones).
_REFERENCE_RENAMES = (
    (r"^feature_extractor\.", "spidr.feature_extractor."),
    (r"^feature_projection\.", "spidr.feature_projection."),
    (r"^(student|teacher)\.pos_conv_embed\.convs\.(\d+)\.", r"\1.pos_conv_embed.layers.\2.conv."),
    (r"^student\.", "spidr.encoder."),
    (r"\.attention\.qkv\.", ".attention.qkv_proj."),
    (r"\.attention\.proj\.", ".attention.out_proj."),
    (r"^heads\.(\d+)\.0\.", r"heads.\1."),
)
_REFERENCE_IGNORED = {"current_step"}  # the reference's step counter; the Trainer keeps the step here
# SpidR-Adapt's supervised phone classifiers (one per language, `supervised_every_step` runs): no SpidR part
_ADAPT_DROPPED_WEIGHTS = re.compile(r"^supervised_classifiers\.")
_CODEBOOK_KEY = re.compile(r"^codebooks\.(\d+)\.(codebook|counts)$")

# Reference model config field -> SpidrConfig field (values converted by `_config_value`).
_REFERENCE_CONFIG_FIELDS = {
    "extractor_mode": "feat_extract_norm",
    "extractor_conv_bias": "conv_bias",
    "encoder_embed_dim": "hidden_size",
    "encoder_projection_dropout": "feat_proj_dropout",
    "encoder_pos_conv_kernel": "num_conv_pos_embeddings",
    "encoder_pos_conv_groups": "num_conv_pos_embedding_groups",
    "encoder_pos_conv_depth": "conv_pos_depth",
    "encoder_num_layers": "num_hidden_layers",
    "encoder_num_heads": "num_attention_heads",
    "encoder_attention_dropout": "attention_dropout",
    "encoder_ff_interm_features": "intermediate_size",
    "encoder_ff_interm_dropout": "activation_dropout",
    "encoder_dropout": "hidden_dropout",
    "encoder_layer_norm_first": "do_stable_layer_norm",
    "encoder_layer_drop": "layerdrop",
    "encoder_qkv_bias": "qkv_bias",
    "codebook_size": "codebook_size",
    "codebook_decay": "codebook_decay",
    "num_codebooks": "num_codebooks",
    "ema_start_decay": "ema_start_decay",
    "ema_final_decay": "ema_final_decay",
    "ema_final_step": "ema_final_step",
    "ema_timescale": "ema_timescale",
    "ema_threshold": "ema_threshold",
    "freeze_step": "freeze_step",
}
_REFERENCE_MASKING_FIELDS = {"mask_prob": "mask_time_prob", "mask_length": "mask_time_length"}
# SpidR-Adapt's model fields beyond SpidR's: its supervised interleaving and the Active Forgetting of SpidRWithReset,
# training procedures that leave the SpidR model itself as it is
_ADAPT_CONFIG_FIELDS = {
    "supervised_every_step",
    "supervised_layer",
    "num_supervised_layers",
    "supervised_languages",
    "adapt_heads",
}
# Run model types of the reference and SpidR-Adapt -> objective (SpidRWithReset is SpidR trained with resets)
_RUN_MODEL_TYPES = {"spidr": "spidr", "dinosr": "dinosr", "spidr_reset": "spidr"}
# Reference masking options this implementation does not have, with the value that means "not used".
_UNSUPPORTED_MASKING = {"mask_selection": "static", "no_mask_overlap": False, "mask_channel_prob": 0.0}
_DEFAULT_CONFIG = SpidrConfig()  # its values' types are those the reference fields must have


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a torch checkpoint with `weights_only=True`, turning every failure into a `ConversionError`."""
    if not path.is_file():
        raise ConversionError(f"{path} is not a file.")
    if not zipfile.is_zipfile(path) and path.read_bytes()[:1] != b"\x80":
        raise ConversionError(f"{path} is not a PyTorch checkpoint (neither a torch zip archive nor a pickle).")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise ConversionError(f"Could not load {path} as a weights-only checkpoint: {error}") from error
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary.")
    return dict(checkpoint)


def is_fairseq_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    model = checkpoint.get("model")
    return isinstance(model, Mapping) and "_ema" in model and "post_extract_proj.weight" in model


@dataclass
class ConversionNotes:
    """What a conversion read beside the weights and what it left out, for the folder's record and card."""

    checkpoint_format: str = "reference"  # "reference", "spidr-adapt" or "fairseq"
    assumed_config: str | None = None  # the base configuration used for lack of a config.json
    dropped_weights: list[str] = field(default_factory=list)
    dropped_config_fields: list[str] = field(default_factory=list)
    ignored_entries: list[str] = field(default_factory=list)  # training state beside the weights


def reference_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a reference checkpoint: `checkpoint["model"]` or the bare dict, `module.` prefix removed."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise ConversionError("The checkpoint's 'model' entry is not a state dict.")
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"Not a state dict: entries that are not tensors: {not_tensors[:10]}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def convert_reference_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename reference (`spidr==0.2.0`) weights to this implementation's names and stack the codebooks."""
    converted: dict[str, torch.Tensor] = {}
    codebooks: dict[str, dict[int, torch.Tensor]] = {"codebook": {}, "counts": {}}
    for key, value in state.items():
        if key in _REFERENCE_IGNORED:
            continue
        if match := _CODEBOOK_KEY.match(key):
            codebooks[match.group(2)][int(match.group(1))] = value
            continue
        for pattern, replacement in _REFERENCE_RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    for name, per_codebook in codebooks.items():
        if per_codebook:
            if sorted(per_codebook) != list(range(len(per_codebook))):
                raise ConversionError(f"Codebook {name} indices are not contiguous: {sorted(per_codebook)}")
            converted[f"codebooks.{name}"] = torch.stack([per_codebook[i] for i in range(len(per_codebook))])
    return _with_codebook_usage(converted)


def _fairseq_layer_renames(prefix: str, target: str) -> tuple[tuple[str, str], ...]:
    return (
        (rf"^{prefix}layers\.(\d+)\.fc1\.", rf"{target}layers.\1.feed_forward.intermediate_dense."),
        (rf"^{prefix}layers\.(\d+)\.fc2\.", rf"{target}layers.\1.feed_forward.output_dense."),
        (rf"^{prefix}layers\.(\d+)\.final_layer_norm\.", rf"{target}layers.\1.final_layer_norm."),
        (rf"^{prefix}layers\.(\d+)\.self_attn_layer_norm\.", rf"{target}layers.\1.layer_norm."),
        (rf"^{prefix}layers\.(\d+)\.self_attn\.(out|q|k|v)_proj\.", rf"{target}layers.\1.attention.\2_proj."),
        (rf"^{prefix}pos_conv\.(\d+)\.0\.", rf"{target}pos_conv_embed.layers.\1.conv."),
        (rf"^{prefix}layer_norm\.", rf"{target}layer_norm."),
    )


_FAIRSEQ_STUDENT_RENAMES = (
    (r"^mask_emb$", "mask_embedding"),
    (r"^layer_norm\.", "spidr.feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "spidr.feature_projection.projection."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"spidr.feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.", r"spidr.feature_extractor.conv_layers.\1.layer_norm."),
    (r"^heads\.(\d+)\.", r"heads.\1."),
    *_fairseq_layer_renames("encoder\\.", "spidr.encoder."),
)
_FAIRSEQ_TEACHER_RENAMES = _fairseq_layer_renames("", "teacher.")
_FAIRSEQ_CODEBOOK_KEY = re.compile(r"^_codebook(_cnts)?(\d+)$")
_FAIRSEQ_QKV_KEY = re.compile(r"^(.*\.attention\.)([qkv])_proj\.(weight|bias)$")


def convert_fairseq_state_dict(model_state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename an original fairseq DinoSR `model` entry (student, `_ema` teacher, codebooks) to our names."""
    renamed: dict[str, torch.Tensor] = {}
    codebooks: dict[str, dict[int, torch.Tensor]] = {"codebook": {}, "counts": {}}
    sources = [(k, v, _FAIRSEQ_STUDENT_RENAMES) for k, v in model_state.items() if k != "_ema"]
    sources += [(k, v, _FAIRSEQ_TEACHER_RENAMES) for k, v in model_state["_ema"].items()]
    for key, value, renames in sources:
        if match := _FAIRSEQ_CODEBOOK_KEY.match(key):
            codebooks["counts" if match.group(1) else "codebook"][int(match.group(2))] = value
            continue
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    # fairseq has separate q/k/v projections; ours is one fused projection
    converted = {k: v for k, v in renamed.items() if not _FAIRSEQ_QKV_KEY.match(k)}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in renamed.items():
        if match := _FAIRSEQ_QKV_KEY.match(key):
            fused.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
    for (prefix, kind), parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"Incomplete q/k/v projections under {prefix}: found {sorted(parts)}")
        converted[f"{prefix}qkv_proj.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    for name, per_codebook in codebooks.items():
        if per_codebook:
            converted[f"codebooks.{name}"] = torch.stack([per_codebook[i] for i in sorted(per_codebook)])
    return _with_codebook_usage(converted)


def _with_codebook_usage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the codebook usage tracking (ours only; original checkpoints have none) as "no usage seen yet"."""
    if "codebooks.counts" in state:
        for name in ("idle_updates", "ever_assigned"):
            state.setdefault(f"codebooks.{name}", torch.zeros_like(state["codebooks.counts"], dtype=torch.float32))
    return state


def read_reference_config(path: Path) -> dict[str, Any] | None:
    """The reference's `config.json` at `path` (None if there is none), checked to be a JSON object."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("model", {}), dict):
        raise ConversionError(f"{path} must be a JSON object (the run config or its 'model' section).")
    return raw


def _conv_layers(layers: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """`extractor_conv_layer_config` ([dim, kernel, stride] per layer) as the conv_dim/kernel/stride tuples."""
    # Lists in a config.json; tuples in a reference config object (SpidRConfig's default)
    is_triples = isinstance(layers, list | tuple) and all(
        isinstance(layer, list | tuple) and len(layer) == 3 and all(_is_int(n) and n > 0 for n in layer)
        for layer in layers
    )
    if not is_triples or not layers:
        raise ConversionError(
            f"extractor_conv_layer_config must be a list of [dim, kernel, stride] positive integers, got {layers!r}."
        )
    return tuple(tuple(column) for column in zip(*layers, strict=True))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_type(name: str, value: Any, ours: str) -> Any:
    """`value` of the reference field `name`, if its JSON type fits SpidrConfig's `ours` (so "yes" is no bool)."""
    default = getattr(_DEFAULT_CONFIG, ours)
    if isinstance(default, bool):
        fits, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        fits, kind = _is_int(value), "an integer"
    elif isinstance(default, float):
        fits, kind = _is_int(value) or isinstance(value, float), "a number"
    else:
        fits, kind = True, ""
    if not fits:
        raise ConversionError(f"Reference config field {name!r} must be {kind}, got {value!r}.")
    return value


def config_from_reference(raw: Mapping[str, Any], objective: str, notes: ConversionNotes | None = None) -> SpidrConfig:
    """Build a SpidrConfig from the reference's `config.json` (full run config or its `model` section), SpidR-Adapt's
    too (its extra fields are dropped, and listed in `notes`)."""
    model_fields = dict(raw.get("model", raw))
    adapt_fields = sorted(set(model_fields) & _ADAPT_CONFIG_FIELDS)
    for name in adapt_fields:
        model_fields.pop(name)
    if notes is not None and adapt_fields:
        notes.checkpoint_format = "spidr-adapt"
        notes.dropped_config_fields = adapt_fields
    kwargs: dict[str, Any] = {}
    if "extractor_conv_layer_config" in model_fields:
        layers = model_fields.pop("extractor_conv_layer_config")
        kwargs["conv_dim"], kwargs["conv_kernel"], kwargs["conv_stride"] = _conv_layers(layers)
    exclude = model_fields.pop("ema_exclude_layers", ["pos_conv_embed"])
    if list(exclude) != ["pos_conv_embed"]:
        raise ConversionError(f"Only ema_exclude_layers=['pos_conv_embed'] is supported, got {exclude}.")
    unknown = sorted(set(model_fields) - set(_REFERENCE_CONFIG_FIELDS))
    if unknown:
        raise ConversionError(f"Unknown fields in the reference model config: {unknown}")
    for name, value in model_fields.items():
        kwargs[_REFERENCE_CONFIG_FIELDS[name]] = _config_value(name, value)
    masking = raw.get("masking", {})
    if not isinstance(masking, dict):
        raise ConversionError(f"The reference config's 'masking' must be a JSON object, got {masking!r}.")
    for name, neutral in _UNSUPPORTED_MASKING.items():
        if masking.get(name, neutral) != neutral:
            raise ConversionError(f"Reference masking option {name}={masking[name]!r} is not supported.")
    kwargs.update(
        {
            ours: _check_type(theirs, masking[theirs], ours)
            for theirs, ours in _REFERENCE_MASKING_FIELDS.items()
            if theirs in masking
        }
    )
    try:
        return SpidrConfig.dinosr_base(**kwargs) if objective == "dinosr" else SpidrConfig(**kwargs)
    except (TypeError, ValueError) as error:  # values of the right type that the config refuses
        raise ConversionError(f"The reference model config is not valid: {error}") from error


def _config_value(name: str, value: Any) -> Any:
    if name == "extractor_mode":
        modes = {"layer_norm": "layer", "group_norm": "group"}
        if value not in modes:
            raise ConversionError(f"Unknown extractor_mode {value!r}; expected one of {sorted(modes)}.")
        return modes[value]
    return _check_type(name, value, _REFERENCE_CONFIG_FIELDS[name])


def _objective_from_run(raw: Mapping[str, Any] | None, requested: str | None) -> str:
    run_type = (raw or {}).get("run", {}).get("model_type")
    if run_type is not None and run_type not in _RUN_MODEL_TYPES:
        raise ConversionError(f"Unknown run model_type {run_type!r}; expected one of {sorted(_RUN_MODEL_TYPES)}.")
    recorded = _RUN_MODEL_TYPES.get(run_type)
    if requested and recorded and requested != recorded:
        raise ConversionError(f"--model-type {requested} contradicts the run's config.json ({run_type}).")
    objective = requested or recorded or "spidr"
    if objective not in OBJECTIVES:
        raise ConversionError(f"Unknown model type {objective!r}; expected one of {OBJECTIVES}.")
    return objective


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise a `ConversionError` naming missing keys, unexpected keys and shape mismatches."""
    expected = model.state_dict()
    problems = []
    if missing := sorted(set(expected) - set(state)):
        problems.append(f"missing keys ({len(missing)}): {missing[:20]}")
    if unexpected := sorted(set(state) - set(expected)):
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}")
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched[:20]}")
    if problems:
        raise ConversionError("The checkpoint does not match the model configuration: " + "; ".join(problems))


_BESIDE = Path("config.json beside")  # `load_original_model`'s default: the config.json beside the checkpoint


def load_original_model(
    source: str | Path, model_type: str | None = None, config: Path | None = _BESIDE
) -> SpidrForPreTraining:
    """Build a `SpidrForPreTraining` from an official checkpoint file (reference, SpidR-Adapt or fairseq DinoSR),
    configured by `config` (the reference's config.json; by default the one beside the checkpoint, if any)."""
    source = Path(source)
    if config is _BESIDE:
        config = source.parent / "config.json" if (source.parent / "config.json").is_file() else None
    return read_original_model(source, model_type, config, ConversionNotes())


def read_original_model(
    source: Path, model_type: str | None, config_path: Path | None, notes: ConversionNotes
) -> SpidrForPreTraining:
    """The model of the checkpoint `source`, configured by `config_path` (None: the base configuration of its model
    type), noting in `notes` what was assumed and left out."""
    checkpoint = load_checkpoint(source)
    if is_fairseq_checkpoint(checkpoint):
        if model_type not in (None, "dinosr"):
            raise ConversionError("A fairseq DinoSR checkpoint can only be converted with --model-type dinosr.")
        # The original DinoSR: fairseq always had q/k/v biases
        config = SpidrConfig.dinosr_base(qkv_bias=True)
        state = convert_fairseq_state_dict(checkpoint["model"])
        notes.checkpoint_format = "fairseq"
    else:
        raw = None if config_path is None else read_reference_config(config_path)
        objective = _objective_from_run(raw, model_type)
        if raw is not None:
            try:
                config = config_from_reference(raw, objective, notes)
            except ConversionError as error:
                raise ConversionError(f"{config_path}: {error}") from error
        else:
            config = SpidrConfig.dinosr_base() if objective == "dinosr" else SpidrConfig()
            notes.assumed_config = f"{objective} base"
        state = reference_state_dict(checkpoint)
        if "supervised_epoch" in checkpoint or any(_ADAPT_DROPPED_WEIGHTS.match(key) for key in state):
            notes.checkpoint_format = "spidr-adapt"
        notes.dropped_weights = sorted(key for key in state if _ADAPT_DROPPED_WEIGHTS.match(key))
        state = convert_reference_state_dict({k: v for k, v in state.items() if k not in notes.dropped_weights})
        if "model" in checkpoint:
            notes.ignored_entries = sorted(key for key in checkpoint if key != "model")
    model = SpidrForPreTraining(config)
    try:
        check_state_dict(model, state)
    except ConversionError as error:
        if notes.assumed_config is None:
            raise
        raise ConversionError(
            f"There is no config.json beside {source}, so the {notes.assumed_config} configuration was assumed and "
            f"does not fit the checkpoint: put the run's config.json next to it, or give it with --config. {error}"
        ) from error
    model.load_state_dict(state, strict=True)
    return model.eval()


def convert(
    source: str | Path,
    destination: str | Path,
    model_type: str | None = None,
    revision: str | None = None,
    config: str | Path | None = None,
    progress: bool = False,
) -> Path:
    """
    Write a Hub-ready folder (weights, configs, code files, pipelines, a card, and `conversion.json`: what was read,
    with its SHA-256, and what was left out) from the checkpoint `source`: a file, URL, Hub repository (`revision`) or
    reference hub name (see `checkpoint_sources.py`). `spidr-hf push` renders the full card.
    """
    destination = Path(destination)
    check_writable(destination)  # before the work, which can take a while (a download, too)
    fetched = fetch_checkpoint(str(source), revision, None if config is None else Path(config), progress)
    if model_type and fetched.model_type and model_type != fetched.model_type:
        raise ConversionError(f"--model-type {model_type} contradicts {source}, a {fetched.model_type} model.")
    notes = ConversionNotes()
    model = read_original_model(fetched.path, model_type or fetched.model_type, fetched.config, notes)
    record = conversion_record(str(source), fetched, notes, model.config)
    try:
        with new_folder(destination) as staging:
            save_hub_ready(model, staging, SpidrFeatureExtractor())
            conversion_card(record, destination.name).save(staging / "README.md")
            (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as error:  # a full disk, a read-only file system
        raise ConversionError(f"Could not write {destination}: {error}") from error
    return destination


def conversion_record(
    source: str, fetched: FetchedCheckpoint, notes: ConversionNotes, config: SpidrConfig
) -> dict[str, Any]:
    """What `conversion.json` holds: the files read, with their SHA-256, and what the conversion assumed or dropped."""
    from .. import __version__

    return {
        "converted_by": f"spidr-hf {__version__}",
        "source": source,
        "checkpoint": {"origin": fetched.origin, "sha256": fetched.sha256},
        "config": None
        if fetched.config is None
        else {"origin": fetched.config_origin, "sha256": file_sha256(fetched.config)},
        "assumed_config": notes.assumed_config,
        "format": notes.checkpoint_format,
        "objective": config.objective,
        "official": fetched.official,
        "dropped": {
            "weights": notes.dropped_weights,
            "config_fields": notes.dropped_config_fields,
            "checkpoint_entries": notes.ignored_entries,
        },
    }


def read_conversion_record(folder: Path) -> dict[str, Any] | None:
    """The `conversion.json` of a converted folder, None for other folders."""
    path = Path(folder) / CONVERSION_RECORD
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def conversion_card(record: Mapping[str, Any], title: str) -> ModelCard:
    """A short card for a converted folder: where it came from (with SHA-256), what was left out, how to load it."""
    family = "SpidR" if record["objective"] == "spidr" else "DinoSR"
    official = record["official"]
    # The official checkpoints and SpidR-Adapt's are released under CC BY-NC 4.0; others' licenses are unknown here
    license_id = "cc-by-nc-4.0" if official in ("spidr-base", "dinosr-base-reproduced") else None
    metadata = ModelCardData(
        library_name="transformers", license=license_id, tags=["spidr-hf", "audio", "speech", record["objective"]]
    )
    checkpoint, config = record["checkpoint"], record["config"]
    lines = [
        f"# {title}",
        "",
        f"A {family} model converted to Hugging Face Transformers by `{record['converted_by']}` (`spidr-hf convert`).",
        "",
        "| Read | From | SHA-256 |",
        "|---|---|---|",
        f"| checkpoint ({record['format']}) | `{shown_origin(checkpoint['origin'])}` | `{checkpoint['sha256']}` |",
    ]
    if config is not None:
        lines.append(f"| config | `{shown_origin(config['origin'])}` | `{config['sha256']}` |")
    lines.append("")
    if record["assumed_config"]:
        lines += [f"No config.json came with the checkpoint: the {record['assumed_config']} configuration.", ""]
    dropped = record["dropped"]
    if dropped["weights"] or dropped["config_fields"]:
        lines += [
            "Left out (not part of the SpidR model): "
            + ", ".join(f"`{name}`" for name in [*dropped["config_fields"], *_weight_groups(dropped["weights"])])
            + ".",
            "",
        ]
    lines += [
        "```python",
        "from transformers import AutoModel",
        "",
        f'model = AutoModel.from_pretrained("path/to/{title}", trust_remote_code=True)  # or its Hub id',
        "```",
        "",
        "`spidr-hf push` replaces this card by the full one" + (f" (`--official {official}`)." if official else "."),
        "",
    ]
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines))


def _weight_groups(names: list[str]) -> list[str]:
    """Dropped weights by module (`supervised_classifiers.de.*`), not one by one."""
    return sorted({".".join(name.split(".")[:2]) + ".*" for name in names})


def describe_conversion(folder: Path) -> str:
    """What the conversion into `folder` read, assumed and left out, and where it wrote, in lines."""
    record = read_conversion_record(folder)
    lines = [f"Read {record['checkpoint']['origin']} (SHA-256 {record['checkpoint']['sha256']})"]
    if record["assumed_config"]:
        lines.append(
            f"No config.json came with it: the {record['assumed_config']} configuration, which fits its weights"
        )
    dropped = record["dropped"]
    if dropped["weights"] or dropped["config_fields"]:
        left_out = [*dropped["config_fields"], *_weight_groups(dropped["weights"])]
        lines.append(f"Left out ({record['format']}, not part of the SpidR model): {', '.join(left_out)}")
    lines.append(f"Wrote {folder} (load it with AutoModel.from_pretrained or AutoModelForPreTraining.from_pretrained)")
    return "\n".join(lines)
