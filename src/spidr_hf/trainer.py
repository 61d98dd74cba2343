"""Pretraining SpidR / DinoSR with the Transformers Trainer: loss, teacher EMA, LR schedule, data, logging."""

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

from .data import SAMPLING_RATE, BucketBatchSampler, DecodedSpeech, SpeechCollator, StreamingBatches

logger = logging.getLogger(__name__)


@dataclass
class SpidrTrainingArguments(TrainingArguments):
    """TrainingArguments plus the paper's tri-stage learning-rate schedule (warm-up uses `warmup_steps`)."""

    lr_hold_steps: int = field(default=188_000, metadata={"help": "Steps at the peak learning rate after warm-up."})
    lr_decay_steps: int = field(default=200_000, metadata={"help": "Steps of exponential decay after the hold."})
    lr_init_scale: float = field(default=0.01, metadata={"help": "Learning rate at step 0, relative to the peak."})
    lr_final_scale: float = field(default=0.01, metadata={"help": "Learning rate after the decay, relative to peak."})
    # Counts the audio samples seen, logged as audio hours and kept in checkpoints ("non_padding" for padded batches)
    include_num_input_tokens_seen: str | bool = "all"


def tri_stage_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    hold_steps: int,
    decay_steps: int,
    init_scale: float = 0.01,
    final_scale: float = 0.01,
) -> LambdaLR:
    """Linear warm-up from `init_scale`, hold at the peak, then exponential decay to `final_scale` (the paper's)."""

    def scale(step: int) -> float:
        if step < warmup_steps:
            return init_scale + (1 - init_scale) * step / warmup_steps
        if step < warmup_steps + hold_steps:
            return 1.0
        return math.exp(math.log(final_scale) * (step - warmup_steps - hold_steps) / decay_steps)

    return LambdaLR(optimizer, scale)


class TeacherUpdateCallback(TrainerCallback):
    """Moves the teacher after every optimizer step and keeps the feature encoder frozen past the freeze step."""

    def __init__(self) -> None:
        self.last_decay = float("nan")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # After resuming past the freeze step: the optimizer was created with the encoder, as in the first run
        if state.global_step >= model.config.freeze_step:
            model.spidr.freeze_feature_encoder()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.last_decay = model.update_teacher(state.global_step)


class SpidrTrainer(Trainer):
    """
    Trainer for `SpidrForPreTraining`: the loss is the mean over the masked frames of the whole global batch (all
    processes and accumulation steps), the teacher follows the student after every optimizer step, AdamW applies
    weight decay to every parameter (as the paper does), the LR follows the tri-stage schedule, batches are bucketed
    by length, and logs include both perplexities, the teacher decay, audio hours seen and skipped files.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, train_lengths=None, data_config: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_lengths = train_lengths
        self.data_config = data_config or {}
        self.teacher_callback = TeacherUpdateCallback()
        self.add_callback(self.teacher_callback)
        self._log_sums = torch.zeros(4, device=self.args.device)  # target ppl, prediction ppl, forwards, audio seconds
        self._skipped = torch.zeros(3, dtype=torch.long, device=self.args.device)
        self._last_log_time = time.perf_counter()

    # ---- data ----
    def _collator(self) -> SpeechCollator:
        return SpeechCollator(
            self.model.config, self.data_config["min_samples"], self.data_config["max_samples"], self.data_config["pad"]
        )

    def get_train_dataloader(self) -> DataLoader:
        if isinstance(self.train_dataset, StreamingBatches):
            loader = DataLoader(
                self.train_dataset,
                batch_size=None,
                collate_fn=self._collator(),
                num_workers=self.args.dataloader_num_workers,
            )
            return self.accelerator.prepare(loader)
        sampler = BucketBatchSampler(
            self.train_lengths,
            self.data_config["max_batch_samples"],
            self.data_config["min_samples"],
            self.data_config["max_samples"],
            num_buckets=self.data_config["num_buckets"],
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            pad=self.data_config["pad"],
        )
        dropped = sampler.num_dropped
        if any(dropped.values()):
            logger.warning(
                "Left out of training: %d unreadable and %d too short (< %d samples) utterances.",
                dropped["unreadable"],
                dropped["too_short"],
                self.data_config["min_samples"],
            )
        loader = DataLoader(
            DecodedSpeech(self.train_dataset, self.data_config["audio_column"]),
            batch_sampler=sampler,
            collate_fn=self._collator(),
            num_workers=self.args.dataloader_num_workers,
            persistent_workers=self.args.dataloader_num_workers > 0,
        )
        return self.accelerator.prepare(loader)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        lengths = self.data_config["eval_lengths"]
        sampler = BucketBatchSampler(
            lengths,
            self.data_config["max_batch_samples"],
            self.data_config["min_samples"],
            self.data_config["max_samples"],
            num_buckets=self.data_config["num_buckets"],
            seed=self.args.seed,  # the same masks at every evaluation
            pad=self.data_config["pad"],
        )
        loader = DataLoader(
            DecodedSpeech(dataset, self.data_config["audio_column"]),
            batch_sampler=sampler,
            collate_fn=self._collator(),
            num_workers=self.args.dataloader_num_workers,
        )
        return self.accelerator.prepare(loader)

    # ---- loss ----
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        """Masked frames in the accumulated batches of all processes: the loss is their mean."""
        count = sum(batch["mask_time_indices"].sum() for batch in batch_samples if "mask_time_indices" in batch)
        count = torch.as_tensor(count, device=device)
        if self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        skipped = inputs.pop("num_skipped")
        if model.training:
            self._skipped += skipped.to(self._skipped.device)
        if "input_values" not in inputs:  # every file of this batch was skipped
            loss = sum(p.view(-1)[0] for p in model.parameters() if p.requires_grad) * 0.0
            return (loss, None) if return_outputs else loss
        outputs = model(**inputs)
        if num_items_in_batch is None:  # evaluation: the batch's own mean
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        masked = outputs.mask_time_indices.sum()
        # DDP averages gradients over processes, hence the world size
        loss = outputs.loss * masked / num_items_in_batch.clamp(min=1) * self.accelerator.num_processes
        with torch.no_grad():
            audio = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_values"].numel()
            self._log_sums += torch.stack(
                [
                    outputs.target_perplexity.float(),
                    outputs.prediction_perplexity.float(),
                    torch.ones((), device=self._log_sums.device),
                    torch.as_tensor(audio, device=self._log_sums.device, dtype=torch.float32) / SAMPLING_RATE,
                ]
            )
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        return loss.detach(), None, None

    # ---- optimizer and schedule ----
    def get_decay_parameter_names(self, model) -> list[str]:
        """The paper decays every parameter, biases and norms included."""
        return [name for name, _ in model.named_parameters()]

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = tri_stage_schedule(
                optimizer or self.optimizer,
                int(self.args.warmup_steps),
                self.args.lr_hold_steps,
                self.args.lr_decay_steps,
                self.args.lr_init_scale,
                self.args.lr_final_scale,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ---- logging ----
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the SpidR figures gathered since the last one
            sums = self.accelerator.reduce(self._log_sums.clone(), reduction="sum")
            skipped = self.accelerator.reduce(self._skipped.clone(), reduction="sum")
            forwards = max(sums[2].item(), 1.0)
            elapsed = time.perf_counter() - self._last_log_time
            logs["target_perplexity"] = sums[0].item() / forwards
            logs["prediction_perplexity"] = sums[1].item() / forwards
            logs["teacher_decay"] = self.teacher_callback.last_decay
            logs["audio_seconds_per_second"] = sums[3].item() / elapsed
            logs["audio_hours_seen"] = self.state.num_input_tokens_seen / SAMPLING_RATE / 3600
            logs["skipped_unreadable"], logs["skipped_too_short"], logs["skipped_invalid"] = skipped.tolist()
            self._log_sums.zero_()
            self._last_log_time = time.perf_counter()
        super().log(logs, start_time)
