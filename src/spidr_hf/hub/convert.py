"""Convert official SpidR / DinoSR checkpoints (reference `spidr` package or original fairseq DinoSR) to HF folders."""

import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..model.configuration_spidr import OBJECTIVES, SpidrConfig
from ..model.feature_extraction_spidr import SpidrFeatureExtractor
from ..model.modeling_spidr import SpidrForPreTraining
from .release import write_release_folder


class ConversionError(ValueError):
    """The source is not a checkpoint this converter understands; nothing was written."""


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


def config_from_reference(raw: Mapping[str, Any], objective: str) -> SpidrConfig:
    """Build a SpidrConfig from the reference's `config.json` (full run config or its `model` section)."""
    model_fields = dict(raw.get("model", raw))
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
    recorded = (raw or {}).get("run", {}).get("model_type")
    if requested and recorded and requested != recorded:
        raise ConversionError(
            f"--model-type {requested} contradicts the config.json beside the checkpoint ({recorded})."
        )
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


def load_original_model(source: str | Path, model_type: str | None = None) -> SpidrForPreTraining:
    """Build a `SpidrForPreTraining` from an official checkpoint file (reference or fairseq DinoSR)."""
    source = Path(source)
    checkpoint = load_checkpoint(source)
    assumed = None  # the configuration that was assumed for lack of a config.json, for the error message
    if is_fairseq_checkpoint(checkpoint):
        if model_type not in (None, "dinosr"):
            raise ConversionError("A fairseq DinoSR checkpoint can only be converted with --model-type dinosr.")
        # The original DinoSR: fairseq always had q/k/v biases
        config = SpidrConfig.dinosr_base(qkv_bias=True)
        state = convert_fairseq_state_dict(checkpoint["model"])
    else:
        config_path = source.parent / "config.json"
        raw = read_reference_config(config_path)
        objective = _objective_from_run(raw, model_type)
        if raw is not None:
            try:
                config = config_from_reference(raw, objective)
            except ConversionError as error:
                raise ConversionError(f"{config_path}: {error}") from error
        else:
            config = SpidrConfig.dinosr_base() if objective == "dinosr" else SpidrConfig()
        state = convert_reference_state_dict(reference_state_dict(checkpoint))
        if raw is None:
            assumed = f"There is no config.json beside {source}, so the {objective} base configuration was assumed"
    model = SpidrForPreTraining(config)
    try:
        check_state_dict(model, state)
    except ConversionError as error:
        if assumed is None:
            raise
        raise ConversionError(
            f"{assumed} and does not fit the checkpoint: put the run's config.json next to it. {error}"
        ) from error
    model.load_state_dict(state, strict=True)
    return model.eval()


def convert(source: str | Path, destination: str | Path, model_type: str | None = None) -> Path:
    """Write a Hub-ready folder (weights, configs, code files, pipelines; `spidr-hf push` adds the card)."""
    destination = Path(destination)
    check_destination_is_writable(destination)  # before the work, which can take a while
    model = load_original_model(source, model_type)
    try:
        return write_release_folder(model, SpidrFeatureExtractor(), None, destination)
    except OSError as error:  # a full disk, a read-only file system
        raise ConversionError(f"Could not write {destination}: {error}") from error


def check_destination_is_writable(destination: Path) -> None:
    """Fail in one line if `destination` cannot be created: under a file or in a folder without write permission."""
    ancestor = destination.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConversionError(f"Cannot create {destination}: {ancestor} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConversionError(f"Cannot create {destination}: no permission to write in {ancestor}.")
