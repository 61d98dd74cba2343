"""
Training a unit language model (`training/train_ulm.py`): its arguments, the datasets of packed unit blocks, and the
causal LM whose vocabulary is the units'.
"""

import zlib
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .errors import ConfigError
from .unit_lm import UnitSource, pack_blocks, read_extracted_units, write_source


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


def held_out(id: str, fraction: float) -> bool:
    """The same split on every run and machine: a hash of the id, not a random draw."""
    return zlib.crc32(id.encode("utf-8")) % 10_000 < fraction * 10_000


def unit_datasets(args: UnitLMArguments):
    """The source of the units, and the train / eval `datasets.Dataset`s of packed blocks (eval None when empty)."""
    from datasets import Dataset

    if args.block_size < 2:
        raise ConfigError(f"block_size must be at least 2, got {args.block_size}")
    if not 0 <= args.eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {args.eval_fraction}")
    source, units = read_extracted_units(args.units, args.deduplicate)
    splits: dict[bool, list[list[int]]] = {False: [], True: []}
    for id in sorted(units):
        splits[held_out(id, args.eval_fraction)].append(source.tokens(units[id]))
    if not splits[False]:
        raise ConfigError(f"No file of {args.units} is left for training: lower eval_fraction")
    train = Dataset.from_dict(pack_blocks(splits[False], args.block_size, source.pad))
    evaluation = Dataset.from_dict(pack_blocks(splits[True], args.block_size, source.pad)) if splits[True] else None
    return source, train, evaluation


def build_unit_lm(args: UnitLMArguments, source: UnitSource) -> PreTrainedModel:
    """A new causal LM of `model_type` whose tokens are the source's units, BOS, EOS and PAD."""
    fixed = {
        "vocab_size": source.vocab_size,
        "bos_token_id": source.bos,
        "eos_token_id": source.eos,
        "pad_token_id": source.pad,
    }
    clashes = sorted(set(fixed) & set(args.model_config))
    if clashes:
        raise ConfigError(f"model_config cannot set {', '.join(clashes)}: the units decide them")
    try:
        config = AutoConfig.for_model(args.model_type, **args.model_config, **fixed)
    except (ValueError, KeyError) as error:
        raise ConfigError(f"model_type {args.model_type!r}: {error}") from error
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and context < args.block_size:
        raise ConfigError(f"block_size {args.block_size} exceeds the model's max_position_embeddings {context}")
    write_source(config, source)
    return AutoModelForCausalLM.from_config(config)
