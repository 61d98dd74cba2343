"""
Training a unit language model (`training/train_ulm.py`): its arguments, the datasets of packed unit blocks, and the
causal LM whose vocabulary is the units'.
"""

import difflib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..errors import ConfigError
from ..training.config import check_known_keys
from ..training.splits import held_out
from ..units.formats import UnitsOutput
from ..units.record import UnitIdentity, read_units
from .unit_lm import UnitVocabulary, iter_blocks, record_identity


@dataclass
class UnitLMArguments:
    units: str = field(
        metadata={"help": "The OUTPUT folder of `spidr-hf extract --units ...` (txt, jsonl or parquet)."}
    )
    model_type: str = field(default="opt", metadata={"help": "Any transformers causal LM type (opt, llama, gpt2...)."})
    model_config: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Fields of that model type's config, e.g. {hidden_size: 768}."}
    )
    block_size: int = field(default=512, metadata={"help": "Tokens per training sequence."})
    deduplicate: bool = field(default=True, metadata={"help": "Merge runs of a unit into one token (the paper's)."})
    eval_fraction: float = field(default=0.05, metadata={"help": "Files held out (by a hash of the id) for eval loss."})


def unit_datasets(args: UnitLMArguments, units: tuple[UnitIdentity, UnitsOutput] | None = None):
    """
    The identity of the units, and the train / eval `datasets.Dataset`s of packed blocks (eval None when empty). Built
    on disk, file by file, through `datasets` (Arrow files in its cache, reused while the units do not change): memory
    holds a batch of rows, whatever the corpus (Libri-Light's 6k h of deduplicated units are ~5e8 tokens). `units`:
    what `read_units` gave for `args.units`, if it was read already.
    """
    from datasets import Dataset, Features, Sequence, Value

    if args.block_size < 2:
        raise ConfigError(f"block_size must be at least 2, got {args.block_size}")
    if not 0 <= args.eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {args.eval_fraction}")
    identity, units_out = units if units is not None else read_units(args.units, args.deduplicate)
    vocabulary = UnitVocabulary(identity)
    # Files in id order, whatever order the shards of the extraction wrote them in
    files = Dataset.from_generator(
        _token_rows,
        features=Features({"id": Value("string"), "tokens": Sequence(Value("int32"))}),
        # No list among the arguments: datasets would take a list for shards, one generator call each
        gen_kwargs={"units_out": units_out, "vocabulary": vocabulary, "signature": units_signature(units_out)},
    ).sort("id")
    held = [held_out(id, args.eval_fraction) for id in files["id"]]
    splits = {
        part: files.select([index for index, is_held in enumerate(held) if is_held == part]) for part in (False, True)
    }
    if not len(splits[False]):
        raise ConfigError(f"No file of {args.units} is left for training: lower eval_fraction")
    block = Features(
        {name: Sequence(Value("int32"), length=args.block_size) for name in ("input_ids", "attention_mask", "labels")}
    )

    def packed(split):
        kwargs = {"files": split, "block_size": args.block_size, "pad": vocabulary.pad}
        return Dataset.from_generator(_blocks, features=block, gen_kwargs=kwargs)

    return identity, packed(splits[False]), packed(splits[True]) if len(splits[True]) else None


def run_inputs(args: UnitLMArguments, identity: UnitIdentity) -> dict[str, Any]:
    """What a unit LM run trains on, which a resumed run must train on too (`training.resume.check_run_inputs`): the
    units folder and the identity of its units, the model, and how the units are cut into blocks and held out."""
    return {
        "units": str(Path(args.units).resolve()),
        "unit_source": identity.to_dict(),
        "model_type": args.model_type,
        "model_config": args.model_config,
        "block_size": args.block_size,
        "eval_fraction": args.eval_fraction,
    }


def units_signature(units_out) -> str:
    """What tells one content of a units output from another: its files' names, sizes and modification times (the
    cache of `unit_datasets` is keyed on it)."""
    paths = units_out.parquet_files() if units_out.format == "parquet" else [units_out.path]
    return ";".join(f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in paths)


def _token_rows(units_out, vocabulary: UnitVocabulary, signature: str) -> Iterator[dict]:
    for id, units in units_out.iter_units():
        yield {"id": id, "tokens": vocabulary.tokens(units, f"{id} in {units_out.path}")}


def _blocks(files, block_size: int, pad: int) -> Iterator[dict]:
    sequences = (tokens for batch in files.iter(batch_size=1000) for tokens in batch["tokens"])
    yield from iter_blocks(sequences, block_size, pad)


def build_unit_lm(args: UnitLMArguments, identity: UnitIdentity) -> PreTrainedModel:
    """A new causal LM of `model_type` whose tokens are the units of `identity`, BOS, EOS and PAD."""
    vocabulary = UnitVocabulary(identity)
    fixed = {
        "vocab_size": vocabulary.vocab_size,
        "bos_token_id": vocabulary.bos,
        "eos_token_id": vocabulary.eos,
        "pad_token_id": vocabulary.pad,
    }
    clashes = sorted(set(fixed) & set(args.model_config))
    if clashes:
        raise ConfigError(f"model_config cannot set {', '.join(clashes)}: the units decide them")
    if args.model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(args.model_type, list(CONFIG_MAPPING.keys()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (opt, llama, gpt2...)"
        raise ConfigError(f"Unknown model_type {args.model_type!r}{hint}")
    if args.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"model_type {args.model_type!r} has no causal language model in transformers")
    try:
        config = AutoConfig.for_model(args.model_type, **args.model_config, **fixed)
    except (ValueError, KeyError, TypeError, StrictDataclassError) as error:  # also the strict configs' checks
        raise ConfigError(f"model_type {args.model_type!r}: {' '.join(str(error).split())}") from error
    check_model_config_keys(args.model_type, args.model_config, config)
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and context < args.block_size:
        raise ConfigError(f"block_size {args.block_size} exceeds the model's max_position_embeddings {context}")
    record_identity(config, identity)
    try:
        return AutoModelForCausalLM.from_config(config)
    except ValueError as error:  # sizes the model's layers refuse (hidden_size not divisible by num_attention_heads)
        raise ConfigError(f"model_config of model_type {args.model_type!r}: {' '.join(str(error).split())}") from error


def check_model_config_keys(model_type: str, model_config: dict[str, Any], config) -> None:
    """
    One line for a `model_config` key that the model type's config does not use, with the closest one it does: a
    config keeps any key it is given, so that a misspelt one (or another model type's: OPT's ffn_dim for llama) would
    be stored and ignored. A key the config took (its own fields, their aliases, and the older names it converts, such
    as llama's rope_theta) is not among its extra entries.
    """
    config_class = type(config)
    default = config_class().to_dict()
    known = set(default) | set(getattr(config_class, "attribute_map", {}))
    known |= set(inspect.signature(config_class.__init__).parameters) - {"self", "args", "kwargs"}
    stored = config.to_dict()
    extra = [key for key in model_config if key in stored and key not in known]
    check_known_keys(extra, sorted(known), f"model_config ({model_type})")
    # Dropout rates are checked by torch only when the model first runs, with a traceback
    for key, value in model_config.items():
        if ("dropout" in key or key.endswith("pdrop")) and isinstance(value, int | float) and not 0 <= value <= 1:
            raise ConfigError(f"model_config.{key} is a dropout probability, in [0, 1]: got {value}")
