"""
Fine-tuning SpidR on downstream tasks (`training/finetune.py`), as SUPERB defines them, on a corpus folder of
`spidr-hf corpus` (a `DatasetDict.save_to_disk` folder with columns id, speaker, audio, phones):

- phone recognition (`task: phones`, SUPERB's PR): CTC over each utterance's phones (pauses left out), trained on the
  `train` split and scored on `dev` (other speakers, as LibriSpeech dev-clean) by the phone error rate, the edit
  distance to the reference phones over their number;
- speaker identification (`task: speakers`, SUPERB's SID): one speaker label per utterance, trained and tested on
  utterances of the same speakers (the `train` split, divided by a hash of each id), scored by accuracy.

Here are the task's arguments, its datasets (labels computed once; audio decoded batch by batch in the collator), the
tokenizer of the phones, the model with its new head, the metric and the Trainer that masks padded frames out of the
CTC predictions.
"""

import dataclasses
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction, Trainer, Wav2Vec2PhonemeCTCTokenizer, Wav2Vec2Processor

from ..data.aligned_speech import open_corpus_split
from ..data.audio import audio_duration
from ..data.flite import PHONE_CLASSES
from ..errors import ConfigError, ModelLoadError
from ..hub.folder import hub_ready
from ..model.configuration_spidr import REPRESENTATIONS, SAMPLING_RATE, SpidrConfig
from ..model.feature_extraction_spidr import SpidrFeatureExtractor
from ..model.loading import load_config, load_feature_extractor
from ..model.modeling_spidr import SpidrForCTC, SpidrForSequenceClassification, SpidrHeadModel, conv_output_lengths
from ..model.pipeline_spidr import load_audio
from ..training.config import check_known_keys
from ..training.splits import held_out
from .log_mel_heads import LogMelForCTC, LogMelForSequenceClassification, LogMelHead

logger = logging.getLogger(__name__)

FINETUNE_TASKS = ("phones", "speakers")
# What the head reads: the SpidR model's layers, or the log-mel energies of the same frames (SUPERB's FBANK baseline)
UPSTREAMS = ("spidr", "log_mel")
# The columns each task reads from the corpus
TASK_COLUMNS = {"phones": ("id", "audio", "phones"), "speakers": ("id", "audio", "speaker")}
PAD, UNK = "<pad>", "<unk>"  # the CTC blank is the pad token (wav2vec2's convention)
LENGTH_COLUMN = "length"  # samples per utterance: `train_sampling_strategy: group_by_length` batches by it
# What the task decides, which `model_config` cannot set
TASK_CONFIG_KEYS = ("vocab_size", "pad_token_id", "num_labels", "id2label", "label2id")
TASK_CONFIG_KEYS += ("use_weighted_layer_sum", "weighted_layer_representation")


@dataclass
class FinetuneArguments:
    """What `training/finetune.py` fine-tunes, on what (the fields of its config besides `TrainingArguments`')."""

    task: str | None = field(default=None, metadata={"help": "phones (phone recognition) or speakers (speaker id)."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A SpidR folder or Hub id (a pretraining folder: its student is taken)."}
    )
    dataset: str | None = field(default=None, metadata={"help": "A `spidr-hf corpus` folder (train and dev splits)."})
    upstream: str = field(
        default="spidr",
        metadata={"help": "spidr (the model's layers) or log_mel (80 log-mel energies per frame: the baseline)."},
    )
    random_init: bool = field(
        default=False,
        metadata={"help": "The architecture of model_name_or_path with weights drawn anew (seed): the baseline."},
    )
    freeze_feature_encoder: bool = field(
        default=True, metadata={"help": "Keep the convolutional feature encoder and projection fixed (wav2vec2's)."}
    )
    freeze_base_model: bool = field(
        default=False, metadata={"help": "Train the head (and layer weights) only: SUPERB's frozen upstream."}
    )
    use_weighted_layer_sum: bool = field(
        default=False, metadata={"help": "Feed the head a learned softmax-weighted sum of the layers (SUPERB's)."}
    )
    weighted_layer_representation: str = field(
        default="hidden_states", metadata={"help": "The layers that sum weighs: hidden_states or layer_results."}
    )
    model_config: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "SpidrConfig fields over the model's, e.g. {final_dropout: 0.1, layerdrop: 0.05}."},
    )
    max_seconds: float | None = field(
        default=20.0, metadata={"help": "Training utterances longer than this are left out (evaluation keeps all)."}
    )
    ignore_phones: list[str] = field(
        default_factory=lambda: list(PHONE_CLASSES["silence"]),
        metadata={"help": "phones: pauses, not phones to recognize (SUPERB's transcripts have none)."},
    )
    test_fraction: float = field(
        default=0.2, metadata={"help": "speakers: utterances of the train split held out (by id hash) for testing."}
    )
    train_split: str = field(default="train", metadata={"help": "The corpus split to train on."})
    eval_split: str = field(default="dev", metadata={"help": "phones: the corpus split to score on."})

    def __post_init__(self) -> None:
        if self.task not in FINETUNE_TASKS:
            raise ConfigError(f"task must be one of {', '.join(FINETUNE_TASKS)}, got {self.task!r}")
        for name, example in (("model_name_or_path", "SPIDR_FOLDER"), ("dataset", "CORPUS")):
            if not getattr(self, name):
                raise ConfigError(f"{name} is not set: add --{name}={example}")
        if self.upstream not in UPSTREAMS:
            raise ConfigError(f"upstream must be one of {', '.join(UPSTREAMS)}, got {self.upstream!r}")
        if self.upstream == "log_mel" and self.random_init:
            raise ConfigError("random_init draws a SpidR model anew: it does not apply to upstream: log_mel")
        if self.weighted_layer_representation not in REPRESENTATIONS:
            raise ConfigError(
                f"weighted_layer_representation must be one of {', '.join(REPRESENTATIONS)}, got "
                f"{self.weighted_layer_representation!r}"
            )
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"max_seconds must be positive (or null: no limit), got {self.max_seconds}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for key in self.model_config:
            if key in TASK_CONFIG_KEYS:
                raise ConfigError(f"model_config cannot set {key}: the task (or its own option) decides it")
        check_known_keys(self.model_config, SpidrConfig().to_dict(), "model_config")


def run_inputs(args: FinetuneArguments) -> dict[str, Any]:
    """What a fine-tuning run trains on, which a resumed run must train on too (`training.resume.check_run_inputs`):
    every field of its arguments, the model and corpus folders by their resolved paths (a rerun from elsewhere
    matches; a Hub id stays as it is)."""
    inputs = dataclasses.asdict(args)
    for name in ("model_name_or_path", "dataset"):
        if Path(inputs[name]).exists():
            inputs[name] = str(Path(inputs[name]).resolve())
    return inputs


@dataclass
class FinetuneTask:
    """A task ready for the Trainer; `processor` is what the output folder gets beside the model."""

    model: SpidrHeadModel | LogMelHead
    processor: Wav2Vec2Processor | SpidrFeatureExtractor
    train: Any  # datasets.Dataset of audio, labels, length
    evaluation: Any
    collator: "AudioCollator"
    compute_metrics: Callable[[EvalPrediction], dict[str, float]]
    metric: str  # the key of compute_metrics' result: per or accuracy
    evaluated_on: str  # what the evaluation set is, for messages


# ---------------------------------------------------------------------------------------------------------- corpus


def audio_num_samples(dataset) -> list[int]:
    """16 kHz samples of each utterance, from the file headers (no decoding)."""
    from datasets import Audio

    undecoded = dataset.select_columns(["audio"]).cast_column("audio", Audio(decode=False))
    lengths = []
    for batch in undecoded.iter(batch_size=256):
        for audio in batch["audio"]:
            source = audio["bytes"] if audio["bytes"] is not None else audio["path"]
            lengths.append(round(audio_duration(source) * SAMPLING_RATE))
    return lengths


def with_labels(dataset, labels: Sequence, lengths: Sequence[int], keep: Sequence[bool] | None = None):
    """The audio column with `labels` and `length` (samples), the rows of `keep` only (all when None)."""
    dataset = dataset.select_columns(["audio"]).add_column("labels", list(labels))
    dataset = dataset.add_column(LENGTH_COLUMN, list(lengths))
    if keep is not None and not all(keep):
        dataset = dataset.select([index for index, kept in enumerate(keep) if kept], keep_in_memory=True)
    return dataset


def short_enough(lengths: Sequence[int], max_seconds: float | None) -> list[bool]:
    return [max_seconds is None or length <= max_seconds * SAMPLING_RATE for length in lengths]


# ------------------------------------------------------------------------------------------------ phone recognition


def phone_string(phones: Sequence[dict], ignore: Sequence[str] = ()) -> str:
    """An utterance's phones as the tokenizer reads and writes them: space-separated, `ignore`d ones left out."""
    return " ".join(phone["phone"] for phone in phones if phone["phone"] not in ignore)


def phone_tokenizer(phones: Sequence[str]) -> Wav2Vec2PhonemeCTCTokenizer:
    """
    A CTC tokenizer whose tokens are `phones` (ids from 2 on, in the order given), after the pad (the CTC blank, 0)
    and unknown (1) tokens.

    Wav2Vec2PhonemeCTCTokenizer, not Wav2Vec2CTCTokenizer: phones have multi-letter names ("hh", "ae"), which
    Wav2Vec2CTCTokenizer would split into letters (it tokenizes characters, with "|" between words); the phoneme
    tokenizer with `do_phonemize=False` reads space-separated phones and decodes CTC outputs (repeats merged, blanks
    dropped) to space-separated phones, which is what the ASR pipeline then returns and what PER counts.
    """
    vocabulary = {PAD: 0, UNK: 1}
    for phone in phones:
        if phone in vocabulary or not phone or " " in phone:
            raise ConfigError(f"The phone {phone!r} cannot be a token (a special token's name, empty, or spaced)")
        vocabulary[phone] = len(vocabulary)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder, "vocab.json")
        vocab_file.write_text(json.dumps(vocabulary, indent=1))
        return Wav2Vec2PhonemeCTCTokenizer(
            str(vocab_file),
            do_phonemize=False,
            pad_token=PAD,
            unk_token=UNK,
            bos_token=None,
            eos_token=None,
            word_delimiter_token=None,
        )


def phone_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Edits (substitutions, deletions, insertions) over the reference phones of all utterances: jiwer's WER."""
    import jiwer

    return float(jiwer.wer(list(references), list(hypotheses)))


def phone_datasets(args: FinetuneArguments):
    """The tokenizer of the corpus' phones and the train / eval datasets of token labels."""
    train = open_corpus_split(args.dataset, args.train_split, TASK_COLUMNS["phones"])
    evaluation = open_corpus_split(args.dataset, args.eval_split, TASK_COLUMNS["phones"])
    texts = {}
    for name, split in (("train", train), ("evaluation", evaluation)):
        try:
            texts[name] = [phone_string(phones, args.ignore_phones) for phones in split["phones"]]
        except (TypeError, KeyError) as error:
            raise ConfigError(
                f"The phones column of {args.dataset} must hold lists of {{phone, start, end}} records ({error})"
            ) from error
    # The vocabulary is the corpus' phone inventory, what its train and dev transcripts use (SUPERB's is the lexicon's)
    inventory = sorted({phone for text in texts["train"] + texts["evaluation"] for phone in text.split()})
    tokenizer = phone_tokenizer(inventory)
    datasets = []
    for name, split in (("train", train), ("evaluation", evaluation)):
        lengths = audio_num_samples(split)
        keep = [bool(text) for text in texts[name]]  # utterances of pauses only have nothing to recognize
        if name == "train":
            keep = [kept and short for kept, short in zip(keep, short_enough(lengths, args.max_seconds), strict=True)]
        if not any(keep):
            raise ConfigError(f"No utterance of {args.dataset} is left to {name[:5]} on (see max_seconds)")
        if not all(keep):
            logger.info("Phone recognition: %d of %d %s utterances left out", keep.count(False), len(keep), name)
        labels = tokenizer(texts[name]).input_ids
        datasets.append(with_labels(split, labels, lengths, keep))
    return tokenizer, *datasets


def phone_metrics(tokenizer) -> Callable[[EvalPrediction], dict[str, float]]:
    """PER of the predicted tokens (the argmax of each valid frame, padding as blanks; see FinetuneTrainer)."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        tokens = np.where(prediction.predictions == -100, tokenizer.pad_token_id, prediction.predictions)
        hypotheses = tokenizer.batch_decode(tokens)
        references = [tokenizer.decode(row[row != -100], group_tokens=False) for row in prediction.label_ids]
        return {"per": phone_error_rate(references, hypotheses)}

    return compute


# ------------------------------------------------------------------------------------------- speaker identification


def speaker_split(ids: Sequence[str], speakers: Sequence[str], test_fraction: float) -> list[bool]:
    """
    Which utterances are test ones: `held_out` by a hash of the id (the same on every run), except those of a speaker
    who would have no training utterance left, which stay in training (every test speaker is a training speaker).
    """
    test = [held_out(str(id), test_fraction) for id in ids]
    trained = {speaker for speaker, is_test in zip(speakers, test, strict=True) if not is_test}
    return [is_test and speaker in trained for speaker, is_test in zip(speakers, test, strict=True)]


def speaker_datasets(args: FinetuneArguments):
    """The speakers (label order) and the train / test datasets of the train split's utterances."""
    split = open_corpus_split(args.dataset, args.train_split, TASK_COLUMNS["speakers"])
    ids, speakers = [str(id) for id in split["id"]], [str(speaker) for speaker in split["speaker"]]
    duplicates = [id for id, count in Counter(ids).items() if count > 1]
    if duplicates:
        raise ConfigError(f"The {args.train_split} split of {args.dataset} has duplicate ids, e.g. {duplicates[0]}")
    names = sorted(set(speakers))
    if len(names) < 2:
        raise ConfigError(f"The {args.train_split} split of {args.dataset} has {len(names)} speaker: SID needs 2")
    test = speaker_split(ids, speakers, args.test_fraction)
    if not any(test):
        raise ConfigError(f"No utterance of {args.dataset} is held out for testing: raise test_fraction")
    lengths = audio_num_samples(split)
    labels = [names.index(speaker) for speaker in speakers]
    train_keep = [
        not is_test and short for is_test, short in zip(test, short_enough(lengths, args.max_seconds), strict=True)
    ]
    return names, with_labels(split, labels, lengths, train_keep), with_labels(split, labels, lengths, test)


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


# ------------------------------------------------------------------------------------------------ model and trainer


@dataclass
class AudioCollator:
    """
    Decodes a batch's audio, standardizes and pads it with the feature extractor (with the attention mask), and pads
    label sequences with -100 (what the CTC loss and the Trainer's metrics skip).
    """

    feature_extractor: SpidrFeatureExtractor

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        audio = [load_audio(row["audio"], None, SAMPLING_RATE) for row in rows]
        batch = self.feature_extractor(
            audio, sampling_rate=SAMPLING_RATE, padding="longest", return_attention_mask=True, return_tensors="pt"
        )
        labels = [row["labels"] for row in rows]
        if isinstance(labels[0], list):
            padded = torch.full((len(labels), max(map(len, labels))), -100, dtype=torch.long)
            for row, sequence in enumerate(labels):
                padded[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
            batch["labels"] = padded
        else:
            batch["labels"] = torch.as_tensor(labels, dtype=torch.long)
        return dict(batch)


LOG_MEL_HEADS: dict[type[SpidrHeadModel], type[LogMelHead]] = {
    SpidrForCTC: LogMelForCTC,
    SpidrForSequenceClassification: LogMelForSequenceClassification,
}


def load_head_model(
    args: FinetuneArguments, model_class: type[SpidrHeadModel], **task_config
) -> SpidrHeadModel | LogMelHead:
    """The student of `model_name_or_path` under a new head, with the task's and `model_config`'s config values."""
    loaded = load_config(args.model_name_or_path)  # one line for a missing folder or what is not SpidR
    config = loaded.config
    values = {
        "use_weighted_layer_sum": args.use_weighted_layer_sum,
        "weighted_layer_representation": args.weighted_layer_representation,
        **args.model_config,
        **task_config,
    }
    for key, value in values.items():
        setattr(config, key, value)
    config.check_values()
    if args.upstream == "log_mel":  # the same head over log-mel frames; nothing to freeze
        return LOG_MEL_HEADS[model_class](config)
    if args.random_init:  # drawn from the training seed (set before): the same baseline on every run
        model = model_class(config)
    else:
        model = load_pretrained_head_model(args, model_class, config, loaded.local_files_only)
    if args.freeze_base_model:
        model.freeze_base_model()
    elif args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model


def load_pretrained_head_model(
    args: FinetuneArguments, model_class: type[SpidrHeadModel], config: SpidrConfig, local_files_only: bool
) -> SpidrHeadModel:
    try:
        return model_class.from_pretrained(args.model_name_or_path, config=config, local_files_only=local_files_only)
    except OSError as error:
        raise ModelLoadError(
            f"Cannot load the model {args.model_name_or_path}: {' '.join(str(error).split())}"
        ) from error
    except RuntimeError as error:  # transformers' refusal of weights whose shapes the config changed
        if "mismatched" not in str(error):
            raise
        saved = load_config(args.model_name_or_path).config
        changed = ", ".join(  # the sizes it changes (the rates and flags of model_config shape no weight)
            f"{key}: {getattr(saved, key, None)!r} -> {value!r}"
            for key, value in args.model_config.items()
            if getattr(saved, key, None) != value and isinstance(value, int | list) and not isinstance(value, bool)
        )
        raise ConfigError(
            f"model_config changes the shapes of the weights of {args.model_name_or_path} ({changed}): its sizes "
            "are the model's; leave them out, or set random_init to train that architecture from scratch"
        ) from error


def build_task(args: FinetuneArguments) -> FinetuneTask:
    """The datasets, the model with its head, the processor and the metric of `args.task`."""
    # The model folder is checked (one line if it is not SpidR) before the corpus is read
    local_files_only = load_config(args.model_name_or_path).local_files_only
    feature_extractor = load_feature_extractor(args.model_name_or_path, local_files_only)
    collator = AudioCollator(feature_extractor)
    if args.task == "phones":
        tokenizer, train, evaluation = phone_datasets(args)
        model = load_head_model(
            args,
            SpidrForCTC,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            ctc_zero_infinity=args.model_config.get("ctc_zero_infinity", True),
        )
        processor = Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)
        return FinetuneTask(
            model, processor, train, evaluation, collator, phone_metrics(tokenizer), "per", f"{args.eval_split} split"
        )
    names, train, evaluation = speaker_datasets(args)
    model = load_head_model(
        args,
        SpidrForSequenceClassification,
        id2label=dict(enumerate(names)),
        label2id={name: index for index, name in enumerate(names)},
    )
    evaluated_on = f"{len(evaluation)} held-out utterances of the {args.train_split} split"
    return FinetuneTask(model, feature_extractor, train, evaluation, collator, accuracy, "accuracy", evaluated_on)


class FinetuneTrainer(Trainer):
    """
    The Trainer, whose CTC predictions are the argmax token of each frame with padded frames as blanks: the metric
    then scores what the model gives each utterance alone (the ASR pipeline's), and evaluation keeps tokens, not
    logits (vocabulary-size times smaller).
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save as the Trainer does; a SpidR model Hub-ready (`hub.folder.hub_ready`), as any other SpidR folder. A
        log-mel baseline head is no model to publish: its weights and processor only."""
        if not (self.args.should_save and isinstance(self.model, SpidrHeadModel)):
            return super()._save(output_dir, state_dict)
        with hub_ready(self.model, output_dir if output_dir is not None else self.args.output_dir):
            super()._save(output_dir, state_dict)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The heads return the hidden states they weigh (use_weighted_layer_sum): predictions are the logits only
        ignore_keys = [*(ignore_keys or []), "hidden_states", "attentions"]
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        unwrapped = self.accelerator.unwrap_model(model)
        if logits is None or not isinstance(unwrapped, (SpidrForCTC, LogMelForCTC)):
            return loss, logits, labels
        tokens = logits.argmax(-1)
        if inputs.get("attention_mask") is not None:
            config = unwrapped.config
            lengths = conv_output_lengths(inputs["attention_mask"].sum(-1), config.conv_kernel, config.conv_stride)
            valid = torch.arange(tokens.shape[1], device=tokens.device) < lengths.to(tokens.device)[:, None]
            tokens = tokens.masked_fill(~valid, config.pad_token_id)
        return loss, tokens, labels
