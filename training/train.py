"""Pretrain SpidR or DinoSR on any Hugging Face `datasets` speech corpus.

    accelerate launch training/train.py training/configs/spidr_base_librispeech.yaml
    python training/train.py training/configs/quickstart_cpu.yaml --dataset=data/spidr-corpus --max_steps=50

The config file (YAML or JSON) holds the fields of `ModelArguments`, `DataArguments` and `SpidrTrainingArguments`
(transformers' `TrainingArguments` plus the LR schedule and the codebook initialisation); `extends: OTHER_FILE`
starts from another config. `--key=value` arguments override it (dotted keys reach into `model_config`; values are
read as JSON, or else as strings). A run whose `output_dir` holds checkpoints resumes from the last one.
"""

import difflib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining
from spidr_hf.data import StreamingBatches, audio_lengths, load_audio_dataset
from spidr_hf.trainer import SpidrTrainer, SpidrTrainingArguments

logger = logging.getLogger("spidr_hf.train")


@dataclass
class ModelArguments:
    objective: str = field(default="spidr", metadata={"help": "spidr or dinosr: the preset the config starts from."})
    model_config: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "SpidrConfig fields overriding the preset, e.g. {hidden_size: 256}."}
    )
    init_from: str | None = field(
        default=None, metadata={"help": "Start from this SpidrForPreTraining folder or Hub repo instead of scratch."}
    )


@dataclass
class DataArguments:
    dataset: str = field(
        metadata={"help": "save_to_disk folder, audio folder, parquet file or Hub dataset name."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Training split; 'a+b' concatenates splits."})
    eval_split: str | None = field(default=None, metadata={"help": "Split for the periodic dev loss."})
    audio_column: str = "audio"
    streaming: bool = field(default=False, metadata={"help": "Stream the training split (needs max_steps)."})
    streaming_buffer: int = field(default=2000, metadata={"help": "Utterances read at once to bucket a stream."})
    max_batch_samples: int = field(default=3_800_000, metadata={"help": "Audio samples per batch and device."})
    min_samples: int = field(default=2_000, metadata={"help": "Shorter utterances are dropped."})
    max_samples: int = field(default=320_000, metadata={"help": "Longer utterances are cropped (20 s)."})
    num_buckets: int = field(default=1000, metadata={"help": "Length buckets for batching."})
    pad: bool = field(default=False, metadata={"help": "Pad batches with attention masks instead of cropping."})
    length_num_proc: int | None = field(default=None, metadata={"help": "Processes reading the audio durations."})


def parse_config(argv: list[str]) -> tuple[ModelArguments, DataArguments, SpidrTrainingArguments]:
    """Read `CONFIG [--key=value ...]` into the three argument dataclasses."""
    if not argv or argv[0].startswith("-"):
        raise SystemExit(__doc__)
    values = read_config_file(Path(argv[0]))
    for override in argv[1:]:
        key, separator, raw = override.removeprefix("--").partition("=")
        if not separator:
            raise SystemExit(f"Overrides take the form --key=value, got {override!r}.")
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _parse_override(raw)
    parser = HfArgumentParser((ModelArguments, DataArguments, SpidrTrainingArguments))
    return parser.parse_dict(values, allow_extra_keys=False)


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """
    A YAML or JSON config. `extends: OTHER` (a path relative to the file) starts from OTHER's values, which the file's
    own override (its `model_config` entries one by one), so that a recipe variant states only what it changes.
    """
    if not path.is_file():
        raise SystemExit(f"Config file {path} not found.")
    if path.resolve() in seen:
        raise SystemExit(f"Config file {path} extends itself (through {' -> '.join(map(str, seen))}).")
    values = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text()) or {}
    if not isinstance(values, dict):
        raise SystemExit(f"Config file {path} must hold a mapping of option names to values.")
    base = values.pop("extends", None)
    if base is None:
        return values
    merged = read_config_file(path.parent / base, (*seen, path.resolve()))
    model_config = {**merged.get("model_config", {}), **values.pop("model_config", {})}
    return {**merged, **values, **({"model_config": model_config} if model_config else {})}


def _parse_override(raw: str) -> Any:
    """JSON values (numbers, true/false, lists), anything else as a string: `--save_strategy=no` stays "no"."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {"true": True, "false": False}.get(raw.lower(), raw)


def build_model(model_args: ModelArguments) -> SpidrForPreTraining:
    known = set(SpidrConfig().to_dict())
    for key in model_args.model_config:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (see SpidrConfig)"
            raise ValueError(f"Unknown model_config key {key!r}{hint}")
    if model_args.init_from:
        return SpidrForPreTraining.from_pretrained(model_args.init_from)
    if model_args.objective == "dinosr":
        config = SpidrConfig.dinosr_base(**model_args.model_config)
    else:
        config = SpidrConfig(**{"objective": model_args.objective, **model_args.model_config})
    return SpidrForPreTraining(config)


def main(argv: list[str]) -> None:
    model_args, data_args, training_args = parse_config(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_output_dir(Path(training_args.output_dir), training_args.resume_from_checkpoint)
    set_seed(training_args.seed)
    model = build_model(model_args)
    if data_args.pad:
        training_args.include_num_input_tokens_seen = "non_padding"  # audio hours without the padding
    if training_args.max_steps > model.config.freeze_step and training_args.ddp_find_unused_parameters is None:
        # The feature encoder stops receiving gradients at the freeze step, after DDP was set up
        training_args.ddp_find_unused_parameters = True

    train_dataset = load_audio_dataset(
        data_args.dataset, data_args.train_split, data_args.dataset_config, data_args.audio_column, data_args.streaming
    )
    data_config = {
        "audio_column": data_args.audio_column,
        "max_batch_samples": data_args.max_batch_samples,
        "min_samples": data_args.min_samples,
        "max_samples": data_args.max_samples,
        "num_buckets": data_args.num_buckets,
        "pad": data_args.pad,
    }
    train_lengths = None
    with training_args.main_process_first(desc="reading audio durations"):
        if data_args.streaming:
            if training_args.max_steps <= 0:
                raise SystemExit("Streaming needs max_steps: the length of a stream is unknown.")
            train_dataset = StreamingBatches(
                _shard_for_this_process(train_dataset, training_args),
                data_args.max_batch_samples,
                data_args.min_samples,
                data_args.max_samples,
                audio_column=data_args.audio_column,
                buffer_size=data_args.streaming_buffer,
                seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
                pad=data_args.pad,
            )
        else:
            train_lengths = audio_lengths(train_dataset, data_args.audio_column, data_args.length_num_proc)
        eval_dataset = None
        if data_args.eval_split:
            eval_dataset = load_audio_dataset(
                data_args.dataset, data_args.eval_split, data_args.dataset_config, data_args.audio_column
            )
            data_config["eval_lengths"] = audio_lengths(eval_dataset, data_args.audio_column, data_args.length_num_proc)

    trainer = SpidrTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=SpidrFeatureExtractor(),
        train_lengths=train_lengths,
        data_config=data_config,
    )
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and Path(training_args.output_dir).is_dir():
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint:
            logger.info("Resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    if summary := trainer.codebook_summary():
        logger.info("Codebooks at the end of training: %s", summary)
    trainer.save_model()  # Hub-ready: model, config with auto_map, code files, preprocessor config
    if trainer.is_world_process_zero():
        logger.info("Saved the pretrained model to %s", training_args.output_dir)
    trainer.accelerator.end_training()  # closes the trackers and the process group of a multi-process run


def check_output_dir(output_dir: Path, resume_from_checkpoint: str | None) -> None:
    """A run writes into a new folder or resumes one; a saved model with no checkpoint to resume is left alone."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} is a file")
    saved_model = (output_dir / "config.json").is_file()
    if resume_from_checkpoint is None and saved_model and not get_last_checkpoint(output_dir):
        raise ValueError(
            f"output_dir {output_dir} already holds a saved model (config.json) and no checkpoint to resume from; "
            "nothing was changed: choose another output_dir"
        )


def _shard_for_this_process(dataset, training_args: SpidrTrainingArguments):
    """Each process reads its own part of a stream."""
    if training_args.world_size == 1:
        return dataset
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(dataset, rank=training_args.process_index, world_size=training_args.world_size)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ValueError as error:  # a bad config value or file: one line, not a traceback
        raise SystemExit(f"train.py: error: {error}") from None
