"""
Speech data for pretraining: the data arguments of a run, any `datasets` source, length-bucketed batches, cropping,
standardization, masking, and `PretrainingData`, which builds the training and evaluation loaders from them.
"""

import dataclasses
import itertools
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import IterableDataset as TorchIterableDataset

from ..data.audio import audio_duration, name_some
from ..data.saved_datasets import is_saved_dataset, load_saved_dataset
from ..model.configuration_spidr import SAMPLING_RATE, SpidrConfig
from ..model.feature_extraction_spidr import SpidrFeatureExtractor
from ..model.modeling_spidr import compute_span_mask, conv_output_lengths
from ..model.pipeline_spidr import load_audio

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset
    from transformers import TrainingArguments

logger = logging.getLogger(__name__)

UNREADABLE = -1  # length recorded for files whose header cannot be read


@dataclass
class DataArguments:
    """Where a pretraining run reads its speech and how it batches it (the data fields of a training config)."""

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

    def __post_init__(self) -> None:
        positive = ["streaming_buffer", "max_batch_samples", "min_samples", "max_samples", "num_buckets"]
        if self.length_num_proc is not None:
            positive.append("length_num_proc")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if self.max_samples < self.min_samples:
            raise ValueError(f"`max_samples` ({self.max_samples}) is below `min_samples` ({self.min_samples}).")
        if self.max_batch_samples < self.min_samples:
            raise ValueError(
                f"`max_batch_samples` ({self.max_batch_samples}) cannot hold one utterance of `min_samples` "
                f"({self.min_samples})."
            )


def run_inputs(data_args: DataArguments) -> dict[str, str | None]:
    """What a pretraining run trains on, which a resumed run must train on too (`training.resume.check_run_inputs`):
    the dataset (a local one by its resolved path) and the split and column it reads. How it is batched may change
    (the batches are bounded by memory, which a resume on other devices may change)."""
    dataset = str(Path(data_args.dataset).resolve()) if Path(data_args.dataset).exists() else data_args.dataset
    return {
        "dataset": dataset,
        "dataset_config": data_args.dataset_config,
        "train_split": data_args.train_split,
        "audio_column": data_args.audio_column,
    }


def load_audio_dataset(
    source: str,
    split: str = "train",
    config_name: str | None = None,
    audio_column: str = "audio",
    streaming: bool = False,
):
    """
    Open a speech dataset from any `datasets` source and decode its audio as 16 kHz mono: a folder written by
    `save_to_disk`, a folder of audio files (`audiofolder`), parquet files (path or glob), or a Hub dataset name.
    """
    from datasets import Audio

    try:
        dataset = _open_dataset(source, split, config_name, streaming)
    except (FileNotFoundError, ConnectionError) as error:  # no such folder, files or Hub dataset; the Hub is offline
        raise ValueError(f"Cannot open the dataset {source}: {' '.join(str(error).split())}") from error
    columns = dataset.column_names if dataset.column_names is not None else list(dataset.features)
    if audio_column not in columns:
        raise ValueError(f"{source} has no {audio_column!r} column; columns: {columns}. Set the audio column name.")
    return dataset.cast_column(audio_column, Audio(sampling_rate=SAMPLING_RATE, num_channels=1))


def _open_dataset(source: str, split: str, config_name: str | None, streaming: bool):
    """The `split` of `source`, opened the way its kind needs (see `load_audio_dataset`)."""
    from datasets import DatasetDict, load_dataset

    path = Path(source)
    if is_saved_dataset(path):
        dataset = load_saved_dataset(path)
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise ValueError(f"{source} has splits {list(dataset)}, not {split!r}.")
            dataset = dataset[split]
        if streaming:
            dataset = dataset.to_iterable_dataset()
    elif path.is_dir():
        dataset = load_dataset("audiofolder", data_dir=source, split=split, streaming=streaming)
    elif source.endswith(".parquet"):
        dataset = load_dataset("parquet", data_files={split: source}, split=split, streaming=streaming)
    else:
        dataset = load_dataset(source, config_name, split=split, streaming=streaming)
    return dataset


def audio_lengths(dataset, audio_column: str = "audio", num_proc: int | None = None) -> np.ndarray:
    """
    Length in 16 kHz samples of every utterance, read from the file headers (no decoding); `UNREADABLE` for files
    that cannot be opened. Used to bucket utterances of similar length and to drop short ones before training.
    """
    from datasets import Audio

    undecoded = dataset.cast_column(audio_column, Audio(decode=False)).select_columns([audio_column])
    with_lengths = undecoded.map(
        _header_lengths,
        batched=True,
        fn_kwargs={"audio_column": audio_column},
        remove_columns=[audio_column],
        num_proc=num_proc,
        desc="Reading audio durations",
    )
    return np.asarray(with_lengths["num_samples"], dtype=np.int64)


def _header_lengths(batch: dict[str, list], audio_column: str) -> dict[str, list[int]]:
    lengths = []
    for audio in batch[audio_column]:
        try:
            duration = audio_duration(audio["bytes"] if audio["bytes"] is not None else audio["path"])
            lengths.append(round(duration * SAMPLING_RATE))
        except Exception as error:  # any decoder failure means an unusable file, which training skips
            logger.debug("Unreadable audio %s: %s", audio.get("path"), error)
            lengths.append(UNREADABLE)
    return {"num_samples": lengths}


def batch_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of one batch's crops and masks: a pure function of the run seed, epoch and batch position."""
    return int(np.random.SeedSequence((seed, epoch, position)).generate_state(1)[0])


class BucketBatchSampler(Sampler[list[tuple[int, int]]]):
    """
    Batches of utterances of similar length, as in the paper: utterances are put in `num_buckets` length buckets
    (uniform between `min_samples` and `max_samples`), shuffled within buckets, grouped until the batch would hold more
    than `max_batch_samples` samples, and the batches are shuffled. Each batch element is `(index, batch seed)`.
    Utterances shorter than `min_samples` or unreadable are left out (see `num_dropped`).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_batch_samples: int,
        min_samples: int,
        max_samples: int,
        num_buckets: int = 1000,
        seed: int = 0,
        pad: bool = False,
    ):
        if not 0 < min_samples <= max_samples <= max_batch_samples:
            raise ValueError(
                f"Need 0 < min_samples ({min_samples}) <= max_samples ({max_samples}) <= max_batch_samples "
                f"({max_batch_samples})."
            )
        lengths = np.asarray(lengths)
        self.kept = np.flatnonzero(lengths >= min_samples)
        self.num_dropped = {
            "unreadable": int((lengths == UNREADABLE).sum()),
            "too_short": int(((lengths >= 0) & (lengths < min_samples)).sum()),
        }
        if len(self.kept) == 0:
            raise ValueError(f"No utterance is readable and at least {min_samples} samples long.")
        self.lengths = np.minimum(lengths[self.kept], max_samples)
        boundaries = np.linspace(min_samples - 1, max_samples + 1, num_buckets + 1)
        self.buckets = np.digitize(self.lengths, boundaries)
        self.max_batch_samples = max_batch_samples
        self.seed = seed
        self.pad = pad
        self.epoch = 0
        self._batches = self._make_batches(0)
        self.num_batches = len(self._batches)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            batches = self._make_batches(epoch)
            # Regrouping can change the number of batches by one or two; the Trainer plans (and resumes) with the
            # first epoch's count, so every epoch has exactly that many: extra batches wait for the next epoch's
            # reshuffle, missing ones are taken again from the start.
            self._batches = [batches[i % len(batches)] for i in range(self.num_batches)]

    def _make_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng((self.seed, epoch))
        # Shuffle, then stable-sort by bucket: shuffled within buckets, buckets in length order
        order = rng.permutation(len(self.kept))
        order = order[np.argsort(self.buckets[order], kind="stable")]
        batches, current, longest = [], [], 0
        for position in order:
            length = int(self.lengths[position])
            # Cropped batches hold sum(lengths) samples at most; padded ones hold len(batch) * longest
            size = (len(current) + 1) * max(longest, length) if self.pad else sum(self.lengths[current]) + length
            if current and size > self.max_batch_samples:
                batches.append(np.asarray(current))
                current, longest = [], 0
            current.append(position)
            longest = max(longest, length)
        batches.append(np.asarray(current))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for position, batch in enumerate(self._batches):
            seed = batch_seed(self.seed, self.epoch, position)
            yield [(int(self.kept[i]), seed) for i in batch]

    def __len__(self) -> int:
        return self.num_batches


@dataclass
class SpeechItem:
    """One decoded utterance (`audio` None when decoding failed) and the seed of the batch it belongs to."""

    audio: np.ndarray | None
    seed: int
    error: str | None = None
    source: str | None = None  # the file (or stream example) it came from, for the warning when it is skipped


class DecodedSpeech(TorchDataset):
    """Index a decoded HF dataset with `(index, batch seed)` keys; decoding failures become items with an error."""

    def __init__(self, dataset, audio_column: str = "audio"):
        self.dataset = dataset
        self.audio_column = audio_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> SpeechItem:
        index, seed = key
        try:
            return SpeechItem(load_audio(self.dataset[index][self.audio_column], None, SAMPLING_RATE), seed)
        except Exception as error:  # a corrupt file must not stop training; the collator counts it
            source = file_names(self.dataset, self.audio_column, [index])[0]
            return SpeechItem(None, seed, f"{type(error).__name__}: {error}", source)


def file_names(dataset, audio_column: str, indices: Sequence[int]) -> list[str]:
    """The audio file of each row of `indices` (read without decoding), or "row N" where the row has no path."""
    from datasets import Audio

    try:
        rows = dataset.cast_column(audio_column, Audio(decode=False)).select(indices)[audio_column]
    except Exception:  # naming the file is for the warning only: never fail because of it
        return [f"row {index}" for index in indices]
    return [(row or {}).get("path") or f"row {index}" for index, row in zip(indices, rows, strict=True)]


class StreamingBatches(TorchIterableDataset):
    """
    Bucketed batches from a streamed dataset: `buffer_size` utterances are read, sorted by length and grouped like
    `BucketBatchSampler`; the batches of each buffer are shuffled. Yields lists of `SpeechItem`.
    """

    def __init__(
        self,
        dataset,
        max_batch_samples: int,
        min_samples: int,
        max_samples: int,
        audio_column: str = "audio",
        buffer_size: int = 2000,
        seed: int = 0,
        pad: bool = False,
    ):
        self.dataset = dataset
        self.max_batch_samples = max_batch_samples
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.audio_column = audio_column
        self.buffer_size = buffer_size
        self.seed = seed
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[SpeechItem]]:
        position = 0
        for buffer_index, buffer in enumerate(self._buffers()):
            usable = [item for item in buffer if item.audio is not None and len(item.audio) >= self.min_samples]
            # Unusable items travel with the buffer's first batch so that the collator counts them
            unusable = [item for item in buffer if item.audio is None or len(item.audio) < self.min_samples]
            batches = []
            if usable:
                sampler = BucketBatchSampler(
                    [len(item.audio) for item in usable],
                    self.max_batch_samples,
                    self.min_samples,
                    self.max_samples,
                    num_buckets=max(1, len(usable) // 4),
                    seed=batch_seed(self.seed, self.epoch, buffer_index),
                    pad=self.pad,
                )
                batches = [[usable[i] for i, _ in batch] for batch in sampler]
            for batch in batches or [[]]:
                seed = batch_seed(self.seed, self.epoch, position)
                yield [dataclasses.replace(item, seed=seed) for item in batch + unusable]
                unusable = []
                position += 1

    def _buffers(self) -> Iterator[list[SpeechItem]]:
        buffer: list[SpeechItem] = []
        iterator = iter(self.dataset)
        for position in itertools.count():
            source = f"example {position} of the stream"
            try:
                example = next(iterator)
            except StopIteration:
                break
            except Exception as error:  # a corrupt file in the stream
                buffer.append(SpeechItem(None, 0, f"{type(error).__name__}: {error}", source))
                continue
            try:
                buffer.append(SpeechItem(load_audio(example[self.audio_column], None, SAMPLING_RATE), 0))
            except Exception as error:
                buffer.append(SpeechItem(None, 0, f"{type(error).__name__}: {error}", source))
            if len(buffer) == self.buffer_size:
                yield buffer
                buffer = []
        if buffer and any(item.audio is not None and len(item.audio) >= self.min_samples for item in buffer):
            yield buffer


class SkippedFiles(NamedTuple):
    """Files a batch left out, by reason; a batch carries them as the tensor `num_skipped` in this order."""

    unreadable: int
    too_short: int
    invalid: int  # NaN or infinite samples


class SpeechCollator:
    """
    Turn a list of `SpeechItem`s into model inputs: drop failed or too-short items (counted in `num_skipped`),
    standardize every utterance over its own samples, crop all to the shortest one at random offsets (the paper) or
    pad to the longest with an attention mask, and draw the masks. All randomness comes from the batch seed.
    """

    def __init__(self, config: SpidrConfig, min_samples: int, max_samples: int, pad: bool = False):
        self.config = config
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.pad = pad
        self.feature_extractor = SpidrFeatureExtractor(min_samples=min(min_samples, config.receptive_field))

    def __call__(self, items: list[SpeechItem]) -> dict[str, torch.Tensor]:
        skipped: Counter[str] = Counter()
        utterances = []
        for item in items:
            if item.audio is None:
                skipped["unreadable"] += 1
                logger.warning("Skipping unreadable audio %s: %s", item.source or "(file unknown)", item.error)
            elif len(item.audio) < self.min_samples:
                skipped["too_short"] += 1
            else:
                try:
                    utterances.append(
                        self.feature_extractor(item.audio, sampling_rate=SAMPLING_RATE)["input_values"][0]
                    )
                except ValueError as error:  # NaN or infinite samples
                    skipped["invalid"] += 1
                    logger.warning("Skipping invalid audio: %s", error)
        counts = torch.tensor(SkippedFiles(skipped["unreadable"], skipped["too_short"], skipped["invalid"]))
        if not utterances:
            return {"num_skipped": counts}
        generator = torch.Generator().manual_seed(items[0].seed)
        input_values, lengths = self._crop_or_pad(utterances, generator)
        frames = conv_output_lengths(lengths, self.config.conv_kernel, self.config.conv_stride)
        batch = {
            "input_values": input_values,
            "mask_time_indices": compute_span_mask(
                frames.tolist(),
                int(frames.max()),
                self.config.mask_time_prob,
                self.config.mask_time_length,
                self.config.mask_time_min_masks,
                generator=generator,
            ),
            "num_skipped": counts,
        }
        if self.pad:
            batch["attention_mask"] = (torch.arange(input_values.shape[1]) < lengths[:, None]).long()
        return batch

    def _crop_or_pad(
        self, utterances: list[np.ndarray], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = [len(u) for u in utterances]
        target = min(max(sizes) if self.pad else min(sizes), self.max_samples)
        batch = torch.zeros(len(utterances), target)
        lengths = torch.zeros(len(utterances), dtype=torch.long)
        for row, utterance in enumerate(utterances):
            length = min(len(utterance), target)
            offset = int(torch.randint(len(utterance) - length + 1, (1,), generator=generator))
            batch[row, :length] = torch.from_numpy(utterance[offset : offset + length])
            lengths[row] = length
        return batch, lengths


@dataclass
class PretrainingData:
    """
    The data of a pretraining run and the loaders over it: the training split (a map-style dataset with the length of
    every utterance, batched by `BucketBatchSampler`, or a stream already batched by `StreamingBatches`) and an
    optional evaluation split with its lengths. `load` opens both as `DataArguments` say; the loaders are plain
    `DataLoader`s that the Trainer hands to `accelerator.prepare`.
    """

    args: DataArguments
    train_dataset: "Dataset | StreamingBatches"
    train_lengths: np.ndarray | None = None  # None for a stream
    eval_dataset: "Dataset | None" = None
    eval_lengths: np.ndarray | None = None
    # Of the training batches' order, crops and masks (TrainingArguments' `data_seed`, else its `seed`)
    seed: int = 0
    # Of the evaluation batches: the same crops and masks at every evaluation (TrainingArguments' `seed`)
    eval_seed: int = 0
    _reported_dropped: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.train_dataset, StreamingBatches) and self.train_lengths is None:
            raise ValueError("A map-style training dataset needs `train_lengths` (see `audio_lengths`).")
        if self.eval_dataset is not None and self.eval_lengths is None:
            raise ValueError("An evaluation dataset needs `eval_lengths` (see `audio_lengths`).")

    @classmethod
    def load(cls, args: DataArguments, training_args: "TrainingArguments") -> "PretrainingData":
        """
        Open the splits of `args` and read their audio lengths from the file headers (the main process first, so
        that the others find them in the `datasets` cache); a streamed training split is split between the processes.
        """
        if args.streaming and training_args.max_steps <= 0:
            raise ValueError("Streaming needs max_steps: the length of a stream is unknown.")
        seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
        train_dataset = load_audio_dataset(
            args.dataset, args.train_split, args.dataset_config, args.audio_column, args.streaming
        )
        train_lengths = eval_dataset = eval_lengths = None
        with training_args.main_process_first(desc="reading audio durations"):
            if args.streaming:
                train_dataset = StreamingBatches(
                    _shard_for_this_process(train_dataset, training_args.process_index, training_args.world_size),
                    args.max_batch_samples,
                    args.min_samples,
                    args.max_samples,
                    audio_column=args.audio_column,
                    buffer_size=args.streaming_buffer,
                    seed=seed,
                    pad=args.pad,
                )
            else:
                train_lengths = audio_lengths(train_dataset, args.audio_column, args.length_num_proc)
            if args.eval_split:
                eval_dataset = load_audio_dataset(args.dataset, args.eval_split, args.dataset_config, args.audio_column)
                eval_lengths = audio_lengths(eval_dataset, args.audio_column, args.length_num_proc)
        return cls(
            args, train_dataset, train_lengths, eval_dataset, eval_lengths, seed=seed, eval_seed=training_args.seed
        )

    def collator(self, config: SpidrConfig) -> SpeechCollator:
        return SpeechCollator(config, self.args.min_samples, self.args.max_samples, self.args.pad)

    def train_dataloader(self, config: SpidrConfig, num_workers: int = 0) -> DataLoader:
        """Batches of the training split; the first time, warns of the utterances left out (unreadable, too short)."""
        if isinstance(self.train_dataset, StreamingBatches):
            return DataLoader(
                self.train_dataset, batch_size=None, collate_fn=self.collator(config), num_workers=num_workers
            )
        sampler = self._bucket_sampler(self.train_lengths, self.seed)
        dropped = sampler.num_dropped
        # Once, though the Trainer builds the loader again (k-means codebooks, then training)
        if any(dropped.values()) and not self._reported_dropped:
            self._reported_dropped = True
            logger.warning(
                "Left out of training: %d unreadable and %d too short (< %d samples) utterances.%s",
                dropped["unreadable"],
                dropped["too_short"],
                self.args.min_samples,
                self._dropped_examples(),
            )
        return DataLoader(
            DecodedSpeech(self.train_dataset, self.args.audio_column),
            batch_sampler=sampler,
            collate_fn=self.collator(config),
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )

    def eval_dataloader(
        self, config: SpidrConfig, num_workers: int = 0, dataset: "Dataset | None" = None
    ) -> DataLoader:
        """Batches of the evaluation split, or of another decoded `dataset` (its lengths are read first)."""
        if dataset is None or dataset is self.eval_dataset:
            if self.eval_dataset is None:
                raise ValueError("This run has no evaluation split (set `eval_split`).")
            dataset, lengths = self.eval_dataset, self.eval_lengths
        else:
            lengths = audio_lengths(dataset, self.args.audio_column, self.args.length_num_proc)
        return DataLoader(
            DecodedSpeech(dataset, self.args.audio_column),
            batch_sampler=self._bucket_sampler(lengths, self.eval_seed),
            collate_fn=self.collator(config),
            num_workers=num_workers,
        )

    def _dropped_examples(self, limit: int = 3) -> str:
        """The first few files left out of training, by reason, for the warning."""
        lengths = self.train_lengths
        reasons = {
            "unreadable": np.flatnonzero(lengths == UNREADABLE),
            "too short": np.flatnonzero((lengths >= 0) & (lengths < self.args.min_samples)),
        }
        parts = []
        for reason, indices in reasons.items():
            if len(indices):
                names = file_names(self.train_dataset, self.args.audio_column, indices[:limit].tolist())
                parts.append(f"{reason}: {name_some(names, limit, total=len(indices))}")
        return f" Among them, {'; '.join(parts)}."

    def _bucket_sampler(self, lengths: np.ndarray, seed: int) -> BucketBatchSampler:
        return BucketBatchSampler(
            lengths,
            self.args.max_batch_samples,
            self.args.min_samples,
            self.args.max_samples,
            num_buckets=self.args.num_buckets,
            seed=seed,
            pad=self.args.pad,
        )


def _shard_for_this_process(dataset: "IterableDataset", process_index: int, world_size: int) -> "IterableDataset":
    """Each process reads its own part of a stream."""
    if world_size == 1:
        return dataset
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(dataset, rank=process_index, world_size=world_size)
