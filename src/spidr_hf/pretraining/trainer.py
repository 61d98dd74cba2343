"""Pretraining SpidR / DinoSR with the Transformers Trainer: loss, teacher EMA and codebooks, LR schedule, logs."""

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from transformers import SchedulerType, Trainer, TrainerCallback, TrainingArguments

from ..hub.folder import hub_ready
from ..model.configuration_spidr import SAMPLING_RATE
from ..model.modeling_spidr import SpidrCodebookHealth, SpidrCodebookStatistics, SpidrForPreTraining
from .codebook_init import KMEANS_FRAMES_PER_CODEWORD, kmeans_codewords, set_codewords, teacher_target_frames
from .data import PretrainingData, SkippedFiles

logger = logging.getLogger(__name__)


class LogSums(NamedTuple):
    """What the training logs average or add up between two logs."""

    target_perplexity: torch.Tensor
    prediction_perplexity: torch.Tensor
    forwards: torch.Tensor  # training forward passes, to average the perplexities over
    audio_seconds: torch.Tensor


# The paper's learning-rate schedule, the `lr_scheduler_type` of SpidrTrainingArguments by default
TRI_STAGE = "tri_stage"


@dataclass
class SpidrTrainingArguments(TrainingArguments):
    """
    TrainingArguments plus the paper's tri-stage learning-rate schedule (`lr_scheduler_type="tri_stage"`, the
    default: warm-up over `warmup_steps`, then the `lr_*` fields below) and the codebook initialisation. Any
    transformers `lr_scheduler_type` works too, and then the `lr_*` fields are unused.
    """

    lr_scheduler_type: str = field(
        default=TRI_STAGE,
        metadata={
            "help": f"{TRI_STAGE!r} (the paper's: linear warm-up, hold, exponential decay) or any transformers "
            "SchedulerType (linear, cosine, ...)."
        },
    )
    lr_hold_steps: int = field(
        default=188_000, metadata={"help": "tri_stage: steps at the peak learning rate after warm-up."}
    )
    lr_decay_steps: int = field(
        default=200_000, metadata={"help": "tri_stage: steps of exponential decay after the hold."}
    )
    lr_init_scale: float = field(
        default=0.01, metadata={"help": "tri_stage: learning rate at step 0, relative to the peak."}
    )
    lr_final_scale: float = field(
        default=0.01, metadata={"help": "tri_stage: learning rate after the decay, relative to the peak."}
    )
    codebook_init_batches: int = field(
        default=0,
        metadata={
            "help": "Small-batch remedy, off in the paper (0: random codewords). Before the first step, fit the "
            "codebooks by k-means on the initial teacher's targets of this many training batches per process "
            "(at most 128 frames per codeword). Pair it with `model_config.codebook_restart_after`."
        },
    )
    # Counts the audio samples seen, logged as audio hours and kept in checkpoints ("non_padding" for padded batches)
    include_num_input_tokens_seen: str | bool = "all"

    def __post_init__(self):
        tri_stage = self.lr_scheduler_type == TRI_STAGE
        known = [TRI_STAGE, *(schedule.value for schedule in SchedulerType)]
        if self.lr_scheduler_type not in known:
            raise ValueError(f"`lr_scheduler_type` must be one of {', '.join(known)}; got {self.lr_scheduler_type!r}.")
        if tri_stage:
            # TrainingArguments checks the name against transformers' schedules, which do not include this one
            self.lr_scheduler_type = SchedulerType.CONSTANT
        super().__post_init__()
        if tri_stage:
            self.lr_scheduler_type = TRI_STAGE
        batches = self.codebook_init_batches
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
            raise ValueError(f"`codebook_init_batches` must be a non-negative integer (0: off), got {batches!r}.")


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


# A codebook is called unhealthy when more than this share of its codewords never got a frame after the first
# `HEALTH_GRACE_UPDATES` updates (at the first update random codewords can miss the data by chance)
UNHEALTHY_SHARE = 0.5
HEALTH_GRACE_UPDATES = 10


class SpidrUpdateCallback(TrainerCallback):
    """
    After every optimizer step: applies the codebook statistics of all the step's micro-batches at once (the codebooks
    add those of the other processes), moves the teacher, and records codebook health for the logs. At the start of
    a run it fits the codebooks by k-means if asked (`codebook_init_batches`), and keeps the feature encoder frozen
    when resuming past the freeze step.
    """

    def __init__(self, trainer: "SpidrTrainer") -> None:
        self.trainer = trainer
        self.statistics: SpidrCodebookStatistics | None = None
        self.last_decay = float("nan")
        # Health of the updates since the last log: running sums on the device (a fixed size however rarely the run
        # logs), the number of updates, and the latest update's
        self.health_sums: torch.Tensor | None = None
        self.health_updates = 0
        self.latest_health: torch.Tensor | None = None
        self.warned = False

    def add(self, statistics: SpidrCodebookStatistics) -> None:
        """Add one micro-batch's codebook statistics to the step's."""
        self.statistics = statistics if self.statistics is None else self.statistics.merge(statistics)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # After resuming past the freeze step: the optimizer was created with the encoder, as in the first run
        if state.global_step >= model.config.freeze_step:
            model.spidr.freeze_feature_encoder()
        if state.global_step == 0 and args.codebook_init_batches > 0:
            self.trainer.initialize_codebooks(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # Every process applies an update, with zero statistics if all its batches were skipped: the update's
        # all-reduce needs them all
        statistics = self.statistics if self.statistics is not None else model.codebooks.zero_statistics()
        self.statistics = None
        health = model.codebooks.apply_statistics(statistics)
        stacked = torch.stack(health).float()  # (figures, num_codebooks)
        self.health_sums = stacked if self.health_sums is None else self.health_sums + stacked
        self.health_updates += 1
        self.latest_health = stacked
        self.last_decay = model.update_teacher(state.global_step)

    def health_logs(self, config, step: int) -> dict[str, float]:
        """
        Per-codebook figures of the updates since the last call, averaged (restarts: summed; codewords never
        assigned: the latest), and a warning the first time more than half a codebook is unused after the first steps.
        """
        if self.health_sums is None:
            return {}
        # One transfer from the device; each figure is (num_codebooks,)
        sums, latest = torch.stack([self.health_sums, self.latest_health]).cpu()
        means, totals = SpidrCodebookHealth(*(sums / self.health_updates)), SpidrCodebookHealth(*sums)
        never_assigned = SpidrCodebookHealth(*latest).never_assigned
        self.health_sums, self.health_updates = None, 0
        logs = {}
        for index, layer in enumerate(config.codebook_layers):
            prefix = f"codebook_layer{layer}"
            logs[f"{prefix}/target_perplexity"] = means.target_perplexity[index].item()
            logs[f"{prefix}/assigned"] = means.assigned[index].item()
            logs[f"{prefix}/never_assigned"] = never_assigned[index].item()
            logs[f"{prefix}/restarted"] = totals.restarted[index].item()
        logs["codebook_frames_per_update"] = means.frames[0].item()
        if not self.warned and step >= HEALTH_GRACE_UPDATES:
            self._warn_if_unhealthy(config, never_assigned, logs["codebook_frames_per_update"])
        return logs

    def _warn_if_unhealthy(self, config, never_assigned: torch.Tensor, frames_per_update: float) -> None:
        unhealthy = [
            f"layer {layer}: {count:.0f} of {config.codebook_size}"
            for layer, count in zip(config.codebook_layers, never_assigned.tolist(), strict=True)
            if count > UNHEALTHY_SHARE * config.codebook_size
        ]
        if not unhealthy:
            return
        self.warned = True
        logger.warning(
            "Codebooks with more than half their codewords never assigned a frame (%s): the codebook updates see "
            "%.0f masked frames each (the paper: about 100,000 over 16 GPUs) and most codewords die. Give each "
            "update more frames (more processes or gradient_accumulation_steps, same global batch as the paper), or "
            "use the small-batch remedy: codebook_init_batches > 0 and model_config.codebook_restart_after > 0.",
            "; ".join(unhealthy),
            frames_per_update,
        )


# Config entries that are not the model's settings: they may differ between a checkpoint and the resumed model
_CONFIG_METADATA = {"transformers_version", "architectures", "auto_map", "custom_pipelines", "dtype", "_name_or_path"}


def check_checkpoint_fits(checkpoint: Path, model: torch.nn.Module) -> None:
    """
    One line, before anything is loaded, if `checkpoint` holds weights of another architecture than `model`: the
    Trainer would load what fits and then fail on the optimizer state ("parameter group that doesn't match").
    """
    weights = checkpoint / "model.safetensors"
    if not weights.is_file():
        return  # another checkpoint format: the Trainer's own loading reports its problems
    with safe_open(str(weights), framework="pt") as saved:
        saved_shapes = {key: tuple(saved.get_slice(key).get_shape()) for key in saved.keys()}  # noqa: SIM118
    model_shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if saved_shapes == model_shapes:
        return
    differences = []
    config_path = checkpoint / "config.json"
    if config_path.is_file() and hasattr(model, "config"):
        saved_config = json.loads(config_path.read_text(encoding="utf-8"))
        ours = model.config.to_dict()
        differences = [
            f"{key}={saved_config.get(key)!r} there, {ours.get(key)!r} here"
            for key in sorted(set(saved_config) | set(ours))
            if key not in _CONFIG_METADATA and _as_json(saved_config.get(key)) != _as_json(ours.get(key))
        ]
    if not differences:
        changed = sorted(set(saved_shapes) ^ set(model_shapes)) or sorted(
            key for key in saved_shapes if saved_shapes[key] != model_shapes[key]
        )
        differences = [f"weights that differ: {changed[:3]}"]
    raise ValueError(
        f"The checkpoint {checkpoint} was made with another model configuration ({'; '.join(differences[:5])}): "
        "resume with the model_config it was made with, or start a new run in another output_dir"
    )


def _as_json(value):
    """A config value as JSON has it (tuples as lists), for comparing a loaded config with a saved one."""
    return json.loads(json.dumps(value))


class SpidrTrainer(Trainer):
    """
    Trainer for `SpidrForPreTraining`: the loss is the mean over the masked frames of the whole global batch (all
    processes and accumulation steps), the codebooks are updated once per optimizer step with the statistics of that
    whole global batch, the teacher follows the student after every optimizer step, AdamW applies weight decay to
    every parameter (as the paper does), the LR follows the tri-stage schedule (or another `lr_scheduler_type`), the
    loaders come from `PretrainingData`, and logs include both perplexities, the teacher decay, audio hours seen and
    skipped files.
    """

    def __init__(
        self,
        model: SpidrForPreTraining,
        args: SpidrTrainingArguments,
        data: PretrainingData | None = None,
        **kwargs,
    ):
        """`data` holds the datasets and builds the loaders (a subclass may build its own loaders instead)."""
        if data is not None:
            if "train_dataset" in kwargs or "eval_dataset" in kwargs:
                raise ValueError("Give the datasets through `data` only, not also as train_dataset or eval_dataset.")
            kwargs.update(train_dataset=data.train_dataset, eval_dataset=data.eval_dataset)
        super().__init__(model=model, args=args, **kwargs)
        self.data = data
        self.update_callback = SpidrUpdateCallback(self)
        self.add_callback(self.update_callback)
        # Sums since the last log, kept on the device (one transfer a log): `LogSums` and `SkippedFiles` in order
        self._log_sums = torch.zeros(len(LogSums._fields), device=self.args.device)
        self._skipped = torch.zeros(len(SkippedFiles._fields), dtype=torch.long, device=self.args.device)
        self._last_log_time = time.perf_counter()

    # ---- data ----
    def get_train_dataloader(self) -> DataLoader:
        loader = self._data().train_dataloader(self.model.config, self.args.dataloader_num_workers)
        return self.accelerator.prepare(loader)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        loader = self._data().eval_dataloader(self.model.config, self.args.dataloader_num_workers, eval_dataset)
        return self.accelerator.prepare(loader)

    def _data(self) -> PretrainingData:
        if self.data is None:
            raise ValueError("SpidrTrainer builds its data loaders from `data` (a PretrainingData); none was given.")
        return self.data

    # ---- loss ----
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        """
        The loss is the mean over the masked frames of the global batch, so the items are masked frames: the
        Trainer's version counts `labels`, which a self-supervised batch does not have. Summed over the accumulated
        micro-batches, and over processes as the Trainer does (`average_tokens_across_devices`, its default).
        """
        count = sum(batch["mask_time_indices"].sum() for batch in batch_samples if "mask_time_indices" in batch)
        count = torch.as_tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """
        The model's loss (in training: its masked-frame loss sum over `num_items_in_batch`, times the number of
        processes as DDP averages their gradients; in evaluation: the batch's own mean), after counting skipped
        files; the codebook statistics go to the optimizer step's update, the perplexities and audio to the logs.
        """
        skipped = inputs.pop("num_skipped")
        if model.training:
            self._skipped += skipped.to(self._skipped.device)
        if "input_values" not in inputs:  # every file of this batch was skipped
            loss = sum(p.view(-1)[0] for p in model.parameters() if p.requires_grad) * 0.0
            return (loss, None) if return_outputs else loss
        # Codebooks are updated once per optimizer step with the statistics of all its micro-batches
        inputs = {**inputs, "defer_codebook_update": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if outputs.codebook_statistics is not None:
            self.update_callback.add(outputs.codebook_statistics)
        if model.training:
            with torch.no_grad():
                audio = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_values"].numel()
                self._log_sums += torch.stack(
                    LogSums(
                        target_perplexity=outputs.target_perplexity.float(),
                        prediction_perplexity=outputs.prediction_perplexity.float(),
                        forwards=torch.ones((), device=self._log_sums.device),
                        audio_seconds=torch.as_tensor(audio, device=self._log_sums.device, dtype=torch.float32)
                        / SAMPLING_RATE,
                    )
                )
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Without `num_items_in_batch` (which the Trainer's version would count): the evaluation loss is the batch mean
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        return loss.detach(), None, None

    # ---- codebooks ----
    @torch.no_grad()
    def initialize_codebooks(self, model: SpidrForPreTraining) -> None:
        """
        Fit the codebooks by k-means on the initial teacher's targets of the first `codebook_init_batches` training
        batches of every process; every process gets the codewords of the main one.
        """
        from accelerate.utils import broadcast, gather_object

        config = model.config
        max_frames = KMEANS_FRAMES_PER_CODEWORD * config.codebook_size
        batches = itertools.islice(self.get_train_dataloader(), self.args.codebook_init_batches)
        frames = teacher_target_frames(
            model,
            (self._prepare_inputs(batch) for batch in batches),
            max_frames=math.ceil(max_frames / self.args.world_size),
            seed=self.args.seed + self.args.process_index,
        )
        if self.args.world_size > 1:
            frames = torch.cat(gather_object([frames]), dim=1)
        logger.info(
            "Initialising %d codebooks of %d codewords by k-means on %d teacher target frames each.",
            config.num_codebooks,
            config.codebook_size,
            frames.shape[1],
        )
        codewords = torch.empty_like(model.codebooks.codebook)
        if self.is_world_process_zero():
            codewords = kmeans_codewords(frames, config.codebook_size, self.args.seed).to(codewords)
        if self.args.world_size > 1:
            codewords = broadcast(codewords, from_process=0)
        set_codewords(model, codewords)

    def codebook_summary(self) -> str | None:
        """The codebook health of the last training log as one line (None before the first log)."""
        health_logs = [entry for entry in self.state.log_history if "codebook_frames_per_update" in entry]
        if not health_logs:
            return None
        logs = health_logs[-1]
        config = self.model.config
        parts = [
            f"layer {layer}: target perplexity {logs[f'codebook_layer{layer}/target_perplexity']:.1f} of "
            f"{config.codebook_size}, {logs[f'codebook_layer{layer}/never_assigned']:.0f} never assigned"
            for layer in config.codebook_layers
        ]
        return f"{'; '.join(parts)} ({logs['codebook_frames_per_update']:.0f} masked frames per update)"

    # ---- resuming ----
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load as the Trainer does, after checking that the checkpoint was made with this model's architecture."""
        check_checkpoint_fits(Path(resume_from_checkpoint), model or self.model)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    # ---- saving ----
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save as the Trainer does, Hub-ready (`hub.folder.hub_ready`): checkpoints and the final model alike."""
        if not self.args.should_save:  # the processes that write nothing
            return super()._save(output_dir, state_dict)
        with hub_ready(self.model, output_dir if output_dir is not None else self.args.output_dir):
            super()._save(output_dir, state_dict)

    # ---- optimizer and schedule ----
    def get_decay_parameter_names(self, model) -> list[str]:
        """The paper decays every parameter, biases and norms included."""
        return [name for name, _ in model.named_parameters()]

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.args.lr_scheduler_type == TRI_STAGE:
            self.lr_scheduler = tri_stage_schedule(
                optimizer or self.optimizer,
                self.args.get_warmup_steps(num_training_steps),
                self.args.lr_hold_steps,
                self.args.lr_decay_steps,
                self.args.lr_init_scale,
                self.args.lr_final_scale,
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)  # the transformers schedules

    # ---- logging ----
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the SpidR figures gathered since the last one
            sums = LogSums(*self.accelerator.reduce(self._log_sums.clone(), reduction="sum").tolist())
            skipped = SkippedFiles(*self.accelerator.reduce(self._skipped.clone(), reduction="sum").tolist())
            forwards = max(sums.forwards, 1.0)
            elapsed = time.perf_counter() - self._last_log_time
            logs["target_perplexity"] = sums.target_perplexity / forwards
            logs["prediction_perplexity"] = sums.prediction_perplexity / forwards
            logs["teacher_decay"] = self.update_callback.last_decay
            logs["audio_seconds_per_second"] = sums.audio_seconds / elapsed
            logs["audio_hours_seen"] = self.state.num_input_tokens_seen / SAMPLING_RATE / 3600
            logs |= {f"skipped_{reason}": count for reason, count in skipped._asdict().items()}
            logs.update(self.update_callback.health_logs(self.model.config, self.state.global_step))
            self._log_sums.zero_()
            self._last_log_time = time.perf_counter()
        super().log(logs, start_time)
