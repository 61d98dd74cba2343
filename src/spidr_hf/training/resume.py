"""
Where a training run writes and from what it resumes, the same for every training script:

- one run at a time in an output folder (`output_dir_in_use`: a lock held while the run lives, released by the kernel
  when it dies), a new folder or a run to resume (a saved model without a checkpoint is left alone);
- the inputs a run trains on, recorded in the folder when it starts (`RUN_INPUTS_FILE`): a resume with other inputs
  is refused in one line naming what differs (`check_run_inputs`);
- the checkpoint to resume, the last complete one (`checkpoint_to_resume`): one that a kill or a full disk cut off
  while it was saved is set aside, with a warning, and the run goes on from the one before;
- a checkpoint that cannot be written (a full disk) is a one-line error, and training stops in one line as soon as
  its weights are no longer finite, before anything of them is logged or saved (`train_or_resume`);
- a resumed run that is already at its last step is not trained again.
"""

import contextlib
import json
import logging
import re
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from ..errors import ConfigError, SpidrError, WriteError
from ..io.atomic_files import writing
from ..io.file_locks import exclusive_lock
from ..io.json_records import read_json_record, write_json_record

logger = logging.getLogger(__name__)

RUN_INPUTS_FILE = "training_inputs.json"  # what a run in the folder trains on, compared when it resumes
RUN_INPUTS_WRITER = "spidr-hf training"
# The optimizer's settings, which a resumed run takes from its checkpoint's optimizer state (its param groups), not
# from its arguments: another value would be ignored without a word. (The schedule's length and warmup follow the
# arguments: max_steps may grow to train further.)
OPTIMIZER_ARGUMENTS = ("optim", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon")
INCOMPLETE_PREFIX = "incomplete-"  # a checkpoint set aside: outside the Trainer's `checkpoint-*` names
_CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
# The files a Trainer writes with torch.save (zip archives, whose directory comes last: a cut-off file has none)
_TORCH_SAVED = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "pytorch_model.bin", "rng_state*.pth")


def writes(training_args) -> bool:
    """Whether this process writes the run's files (`should_save`), once the arguments know which process it is: until
    their devices are set up, every process of a launched run takes itself for the first."""
    _ = training_args.device  # sets up the processes (as the Trainer would)
    return training_args.should_save


def check_output_dir(output_dir: Path, resume_from_checkpoint: str | None) -> None:
    """A run writes into a new folder or resumes one; a saved model with no checkpoint to resume is left alone."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {output_dir} is a file")
    saved_model = (output_dir / "config.json").is_file()
    if resume_from_checkpoint is None and saved_model and not last_complete_checkpoint(output_dir):
        raise ConfigError(
            f"output_dir {output_dir} already holds a saved model (config.json) and no checkpoint to resume from; "
            "nothing was changed: choose another output_dir"
        )


@contextlib.contextmanager
def output_dir_in_use(training_args) -> Iterator[None]:
    """
    Around a whole run: its output folder checked (`check_output_dir`) and locked by the processes that write it, so
    that a second run into the same folder is refused while this one lives (both would write the same checkpoints
    and one model would be lost). The lock is the folder's own (no file is left in it) and dies with the process.
    """
    output_dir = Path(training_args.output_dir)
    check_output_dir(output_dir, training_args.resume_from_checkpoint)
    if not writes(training_args):  # the other processes of a launched run write nothing
        yield
        return
    created = not output_dir.exists()
    with writing(output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
    busy = f"Another training run is writing into {output_dir}: wait for it to end, or choose another output_dir"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(output_dir, wait=False, busy_message=busy))
        except BlockingIOError as error:
            raise SpidrError(str(error)) from None
        try:  # under the lock: what it removes is this run's
            check_output_dir(output_dir, training_args.resume_from_checkpoint)  # again, now that no other run writes
            yield
        except BaseException:
            # A run refused or failed before it wrote anything (a bad value, a missing dataset) leaves no folder
            if created and {path.name for path in output_dir.iterdir()} <= {RUN_INPUTS_FILE}:
                shutil.rmtree(output_dir, ignore_errors=True)
            raise


def check_run_inputs(training_args, inputs: Mapping[str, Any]) -> None:
    """
    Compare the `inputs` of this run (what it trains on: its data, its starting model; JSON values) with those
    recorded by the run it resumes, and record them when they are new. A resume on other inputs would train the saved
    run on them without a word: it is refused in one line naming what differs. The optimizer's settings are among
    them (`OPTIMIZER_ARGUMENTS`): a resumed run takes them from its checkpoint, whatever its arguments say. A folder
    with nothing to resume (no complete checkpoint, no saved model) takes the new inputs.
    """
    optimizer = {
        name: getattr(getattr(training_args, name), "value", getattr(training_args, name))
        for name in OPTIMIZER_ARGUMENTS
    }
    inputs = json.loads(json.dumps({**inputs, "optimizer": optimizer}))  # as the file holds them: tuples as lists
    output_dir = Path(training_args.output_dir)
    folders = [output_dir]
    if training_args.resume_from_checkpoint is not None:  # a checkpoint of another run's folder
        folders.append(Path(training_args.resume_from_checkpoint).parent)
    for folder in dict.fromkeys(folders):
        recorded = read_run_inputs(folder)
        if recorded is None or recorded == inputs or (folder == output_dir and not holds_a_run(folder)):
            continue
        ours, theirs = _flattened(inputs), _flattened(recorded)
        changes = "; ".join(
            f"{key}: {json.dumps(theirs.get(key))} -> {json.dumps(ours.get(key))}"
            for key in sorted(set(ours) | set(theirs))
            if ours.get(key) != theirs.get(key)
        )
        raise SpidrError(
            f"{folder} holds a run on other inputs ({changes}): resume it with the same inputs, or choose another "
            "output_dir"
        )
    if writes(training_args) and read_run_inputs(output_dir) != inputs:
        write_json_record(output_dir / RUN_INPUTS_FILE, RUN_INPUTS_WRITER, {"inputs": inputs})


def read_run_inputs(folder: Path) -> dict[str, Any] | None:
    """The inputs recorded in `folder` (None: no record, as in the folders of earlier spidr-hf versions)."""
    return read_json_record(
        folder / RUN_INPUTS_FILE, RUN_INPUTS_WRITER, "inputs", "a record of spidr-hf's training inputs"
    )


def _flattened(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys, so that a difference names the entry that differs."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def holds_a_run(output_dir: Path) -> bool:
    """Whether `output_dir` holds something of a run to resume or keep: a complete checkpoint or a saved model."""
    return (output_dir / "config.json").is_file() or last_complete_checkpoint(output_dir) is not None


def incomplete_reason(checkpoint: Path) -> str | None:
    """
    Why `checkpoint` cannot be resumed, or None when it is complete. The Trainer writes a checkpoint's
    trainer_state.json after every other file: a checkpoint cut off while it was saved (a kill, a full disk) has none,
    or a cut-off one. A file cut off since (a crash of the machine before its data reached the disk) is found too: a
    safetensors file whose header does not cover it, a torch.save archive without its closing directory.
    """
    try:
        state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {TRAINER_STATE_NAME}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{TRAINER_STATE_NAME} is cut off"
    match = _CHECKPOINT_NAME.fullmatch(checkpoint.name)
    if not isinstance(state, dict) or (match is not None and state.get("global_step") != int(match[1])):
        return f"its {TRAINER_STATE_NAME} is not that of step {match[1] if match else '?'}"
    from safetensors import SafetensorError, safe_open

    for path in sorted(checkpoint.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError):
            return f"{path.name} is cut off"
    for pattern in _TORCH_SAVED:
        for path in sorted(checkpoint.glob(pattern)):
            if not zipfile.is_zipfile(path):
                return f"{path.name} is cut off"
    return None


def checkpoints_by_step(output_dir: Path) -> list[Path]:
    """The Trainer's checkpoint folders of `output_dir` (`checkpoint-N`), by step."""
    if not output_dir.is_dir():
        return []
    found = [
        (int(match[1]), path)
        for path in output_dir.iterdir()
        if (match := _CHECKPOINT_NAME.fullmatch(path.name)) and path.is_dir()
    ]
    return [path for _, path in sorted(found)]


def last_complete_checkpoint(output_dir: Path, set_aside: bool = False) -> Path | None:
    """
    The checkpoint of `output_dir` with the highest step that is complete (`incomplete_reason`). With `set_aside`, the
    incomplete ones are renamed `incomplete-checkpoint-N` beside it, with a warning: left as they were, the Trainer
    would count them among the checkpoints it keeps (save_total_limit), and write the same step into one again.
    """
    complete = None
    for checkpoint in checkpoints_by_step(output_dir):
        reason = incomplete_reason(checkpoint)
        if reason is None:
            complete = checkpoint
        elif set_aside:
            set_aside_incomplete(checkpoint, reason)
        else:  # said once, by the process that sets it aside
            logger.debug("%s is incomplete (%s): it is not resumed", checkpoint, reason)
    return complete


def set_aside_incomplete(checkpoint: Path, reason: str) -> None:
    aside = checkpoint.with_name(f"{INCOMPLETE_PREFIX}{checkpoint.name}")
    replaced = ""
    if aside.exists():  # the same step cut off before
        shutil.rmtree(aside)
        replaced = " (in place of the one set aside there before)"
    try:
        checkpoint.rename(aside)
    except FileNotFoundError:  # set aside by another process meanwhile
        return
    logger.warning(
        "%s is incomplete (%s: the run was killed, or the disk was full, while it was saved or deleted): set aside "
        "as %s%s, which may be deleted; the run resumes from the last complete checkpoint",
        checkpoint,
        reason,
        aside.name,
        replaced,
    )


def checkpoint_to_resume(training_args) -> str | None:
    """
    `resume_from_checkpoint` if set (it must be complete), else the last complete checkpoint in `output_dir`: a stopped
    run goes on by itself. The processes that write set the incomplete ones aside (`last_complete_checkpoint`).
    """
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is not None:
        if not Path(checkpoint).is_dir():
            raise ConfigError(f"resume_from_checkpoint {checkpoint} is not a folder")
        reason = incomplete_reason(Path(checkpoint))
        if reason is not None:
            raise ConfigError(f"resume_from_checkpoint {checkpoint} is incomplete ({reason}): give a complete one")
        return checkpoint
    found = last_complete_checkpoint(Path(training_args.output_dir), set_aside=writes(training_args))
    if found is not None:
        logger.info("Resuming from %s", found)
    return str(found) if found is not None else None


def train_or_resume(trainer: Trainer) -> TrainOutput | None:
    """
    `trainer.train`, resumed from `checkpoint_to_resume`, and its `TrainOutput`; None when that checkpoint is at the
    run's last step already (a run killed after its last checkpoint, or run again when finished): its weights are
    loaded and nothing is trained, where the Trainer would take one step past `max_steps` (transformers 5.25 resumes
    at the next batch of the epoch before it checks the step count), so that a rerun would change a finished model.
    Training stops with one line when the weights are no longer finite (`StopWhenNotFinite`); a checkpoint that cannot
    be written is one line naming it.
    """
    checkpoint = checkpoint_to_resume(trainer.args)
    if checkpoint is not None:
        state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
        last_step = trainer.args.max_steps if trainer.args.max_steps > 0 else state.max_steps
        if state.global_step >= last_step:
            logger.info("%s is at the last step (%d): nothing left to train", checkpoint, state.global_step)
            trainer._load_from_checkpoint(checkpoint)  # the Trainer's own loading, as train() does it
            trainer.state = state
            return None
    if not any(isinstance(callback, StopWhenNotFinite) for callback in trainer.callback_handler.callbacks):
        trainer.add_callback(StopWhenNotFinite())
    with checkpoint_failures_in_one_line(trainer):
        return trainer.train(resume_from_checkpoint=checkpoint)


def save_final_model(trainer: Trainer) -> None:
    """`trainer.save_model()` into its output folder; a full disk is one line naming it."""
    with writing(trainer.args.output_dir):
        trainer.save_model()


@contextlib.contextmanager
def checkpoint_failures_in_one_line(trainer: Trainer) -> Iterator[None]:
    """
    While the block runs, a checkpoint that cannot be written (a full disk, a quota: the Trainer's torch.save and
    safetensors say so in their own words, "unexpected pos" among them) is a one-line `WriteError` naming it. The
    Trainer has no hook around its saving of a checkpoint: its method is wrapped on this trainer for the block.
    """
    save_checkpoint = trainer._save_checkpoint

    def saving(model, trial) -> None:
        folder = Path(trainer._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        try:
            with writing(folder):
                save_checkpoint(model, trial)
        except WriteError as error:
            message = f"{error}: make room, then run again (it resumes from the last complete checkpoint)"
            raise WriteError(message) from error.__cause__

    trainer._save_checkpoint = saving
    try:
        yield
    finally:
        del trainer._save_checkpoint  # the class's own again


class StopWhenNotFinite(TrainerCallback):
    """
    Stops training in one line once the weights are no longer finite (a loss that diverged or was NaN makes them NaN
    for good), checked after each optimizer step that is followed by a log, an evaluation or a save, or that ends the
    run: no checkpoint or final model of such weights is written, and no NaN loss is logged as a number (the Trainer's
    `logging_nan_inf_filter` logs the mean of the earlier losses in place of a NaN one: 0 at the first log). An fp16
    step skipped for an overflow leaves the weights finite, as it should.
    """

    def on_step_end(self, args, state, control, model=None, **kwargs):
        due = control.should_log or control.should_evaluate or control.should_save or control.should_training_stop
        if model is None or not due:
            return
        parameters = [parameter for parameter in model.parameters() if parameter.is_floating_point()]
        if not parameters or torch.stack([parameter.isfinite().all() for parameter in parameters]).all():
            return
        raise SpidrError(
            f"Training stopped at step {state.global_step}: the weights are no longer finite (NaN or infinite), the "
            "loss diverged; nothing of them was saved. Lower learning_rate (or check the data) and train into a new "
            "output_dir (a resumed run keeps the learning rate schedule of its checkpoint)"
        )
