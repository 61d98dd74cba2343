"""
Where a training run writes and from what it resumes: a new output folder or a run to resume (a saved model without a
checkpoint is left alone), the checkpoint to resume, and a resumed run that is already at its last step.
"""

import logging
from pathlib import Path

from transformers import Trainer, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import TrainOutput, get_last_checkpoint

logger = logging.getLogger(__name__)


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


def train_or_resume(trainer: Trainer) -> TrainOutput | None:
    """
    `trainer.train`, resumed from `checkpoint_to_resume`, and its `TrainOutput`; None when that checkpoint is at the
    run's last step already (a run killed after its last checkpoint, or run again when finished): its weights are
    loaded and nothing is trained, where the Trainer would take one step past `max_steps` (transformers 5.25 resumes
    at the next batch of the epoch before it checks the step count), so that a rerun would change a finished model.
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
    return trainer.train(resume_from_checkpoint=checkpoint)


def checkpoint_to_resume(training_args) -> str | None:
    """`resume_from_checkpoint` if set, else the last checkpoint in `output_dir`: a stopped run goes on by itself."""
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and Path(training_args.output_dir).is_dir():
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint:
            logger.info("Resuming from %s", checkpoint)
    return checkpoint
