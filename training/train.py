"""Pretrain SpidR or DinoSR on any Hugging Face `datasets` speech corpus.

    accelerate launch training/train.py training/configs/spidr_base_librispeech.yaml
    python training/train.py training/configs/quickstart_cpu.yaml --dataset=data/spidr-corpus --max_steps=50

The config file (YAML or JSON) holds the fields of `ModelArguments` (spidr_hf.pretraining.setup), `DataArguments`
(spidr_hf.pretraining.data) and `SpidrTrainingArguments` (spidr_hf.pretraining.trainer: transformers'
`TrainingArguments` plus the tri-stage LR schedule and the codebook initialisation); `extends: OTHER_FILE` starts from
another config. `--key=value` arguments override it (dotted keys reach into `model_config`; values are read as JSON,
or else as strings). A run whose `output_dir` holds checkpoints resumes from the last one.
"""

import logging
import os
import sys

from transformers import set_seed

from spidr_hf import SpidrFeatureExtractor
from spidr_hf.pretraining.data import PretrainingData, run_inputs
from spidr_hf.pretraining.setup import build_model, complete_training_arguments, parse_pretraining_config
from spidr_hf.pretraining.trainer import SpidrTrainer
from spidr_hf.training.resume import check_run_inputs, output_dir_in_use, save_final_model, train_or_resume
from spidr_hf_cli import run_script

logger = logging.getLogger("spidr_hf.train")


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    model_args, data_args, training_args = parse_pretraining_config(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    with output_dir_in_use(training_args):  # one run at a time in output_dir
        check_run_inputs(training_args, run_inputs(data_args))  # a resume goes on with the same data
        set_seed(training_args.seed)
        model = build_model(model_args)
        complete_training_arguments(training_args, data_args, model.config)
        trainer = SpidrTrainer(
            model=model,
            args=training_args,
            data=PretrainingData.load(data_args, training_args),
            processing_class=SpidrFeatureExtractor(),
        )
        train_or_resume(trainer)
        if summary := trainer.codebook_summary():
            logger.info("Codebooks at the end of training: %s", summary)
        save_final_model(trainer)  # Hub-ready: model, config with auto_map, code files, preprocessor config
        if trainer.is_world_process_zero():
            logger.info("Saved the pretrained model to %s", training_args.output_dir)
    # Every process waits for the first to finish saving: a process tearing the gloo group down while another still
    # used it was seen to abort at exit (SIGABRT, "terminate called without an active exception"), once in CI
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # closes the trackers and the process group of a multi-process run


if __name__ == "__main__":
    run_script(main, sys.argv[1:], "train.py")  # a bad config value or file: one line; a bug: its traceback
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Everything is saved and closed. A gloo worker thread can still be releasing the last collective's tensors
        # while Python finalizes; it then cannot take the GIL and aborts the process (seen in 1 CPU run in 5).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
