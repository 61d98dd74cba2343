"""Train a unit language model on the units of `spidr-hf extract`, with the transformers Trainer.

    accelerate launch training/train_ulm.py training/configs/ulm_opt125m.yaml --units=units-out
    python training/train_ulm.py training/configs/ulm_tiny.yaml --units=runs/units --output_dir=runs/ulm

The config file (YAML or JSON) holds the fields of `UnitLMArguments` (spidr_hf.slm.training: the units folder, any
transformers causal LM type and its config, the block size, deduplication) and of transformers' `TrainingArguments`;
`--key=value` overrides them. The saved model loads with `AutoModelForCausalLM.from_pretrained` and its config records
the identity of its units (`unit_source`: SpidR model and weights hash, layer, unit kind, number of units,
deduplication), which `spidr-hf slm-score` checks. A run whose `output_dir` holds checkpoints resumes.
"""

import logging
import sys

from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

from spidr_hf.slm.training import UnitLMArguments, build_unit_lm, run_inputs, unit_datasets
from spidr_hf.slm.unit_lm import describe
from spidr_hf.training.config import parse_config
from spidr_hf.training.resume import check_run_inputs, output_dir_in_use, save_final_model, train_or_resume
from spidr_hf.units.record import read_units
from spidr_hf_cli import run_script

logger = logging.getLogger("spidr_hf.train_ulm")


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    unit_args, training_args = parse_config(argv, classes=(UnitLMArguments, TrainingArguments))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    with output_dir_in_use(training_args):  # one run at a time in output_dir
        units = read_units(unit_args.units, unit_args.deduplicate)
        check_run_inputs(training_args, run_inputs(unit_args, units[0]))  # a resume goes on with the same units
        set_seed(training_args.seed)
        identity, train, evaluation = unit_datasets(unit_args, units)
        logger.info("Units: %s; %d training blocks of %d tokens", describe(identity), len(train), unit_args.block_size)
        model = build_unit_lm(unit_args, identity)
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=train,
            eval_dataset=evaluation,
            data_collator=default_data_collator,
        )
        train_or_resume(trainer)
        if evaluation is not None:
            logger.info("Held-out loss: %.4f", trainer.evaluate()["eval_loss"])
        save_final_model(trainer)
        if trainer.is_world_process_zero():
            logger.info("Saved the unit language model to %s", training_args.output_dir)


if __name__ == "__main__":
    run_script(main, sys.argv[1:], "train_ulm.py")  # a bad config value or file: one line; a bug: its traceback
