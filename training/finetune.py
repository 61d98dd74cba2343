"""Fine-tune a SpidR model on phone recognition or speaker identification, with the transformers Trainer.

    accelerate launch training/finetune.py training/configs/finetune_phones_cpu.yaml \
        --model_name_or_path=SPIDR_FOLDER --dataset=CORPUS --output_dir=OUT
    python training/finetune.py training/configs/finetune_speakers_cpu.yaml \
        --model_name_or_path=SPIDR_FOLDER --dataset=CORPUS --output_dir=OUT

The config file (YAML or JSON) holds the fields of `FinetuneArguments` (spidr_hf.finetuning.tasks: the task, phones or
speakers, the model, the `spidr-hf corpus` folder, what to freeze, the weighted layer sum) and of transformers'
`TrainingArguments`; `--key=value` overrides them. The tasks are SUPERB's: phones is phone recognition (CTC, phone
error rate on the corpus' dev split, other speakers), speakers is speaker identification (accuracy on utterances of
the train split's speakers held out by a hash of their id). OUT is a Hub-ready folder: the model with the code that
`trust_remote_code=True` loads, and its processor (the feature extractor, and for phones the phone tokenizer), so that
`pipeline("automatic-speech-recognition" or "audio-classification", model=OUT, trust_remote_code=True)` runs it. The
final metric is printed and written to OUT/eval_results.json. A run whose `output_dir` holds checkpoints resumes.
"""

import logging
import sys

from transformers import TrainingArguments, set_seed

from spidr_hf.finetuning.tasks import FinetuneArguments, FinetuneTrainer, build_task, run_inputs
from spidr_hf.training.config import parse_config
from spidr_hf.training.resume import check_run_inputs, output_dir_in_use, save_final_model, train_or_resume
from spidr_hf_cli import run_script

logger = logging.getLogger("spidr_hf.finetune")


def main(argv: list[str]) -> dict[str, float]:
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    args, training_args = parse_config(argv, classes=(FinetuneArguments, TrainingArguments))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    with output_dir_in_use(training_args):  # one run at a time in output_dir
        check_run_inputs(training_args, run_inputs(args))  # a resume goes on with the same model and corpus
        # The collator decodes the audio column, which the model's forward does not name: the Trainer must keep it
        training_args.remove_unused_columns = False
        set_seed(training_args.seed)
        task = build_task(args)
        logger.info(
            "Task %s: %d training utterances, evaluation on %s (%d)",
            args.task,
            len(task.train),
            task.evaluated_on,
            len(task.evaluation),
        )
        trainer = FinetuneTrainer(
            model=task.model,
            args=training_args,
            train_dataset=task.train,
            eval_dataset=task.evaluation,
            data_collator=task.collator,
            processing_class=task.processor,
            compute_metrics=task.compute_metrics,
        )
        train_result = train_or_resume(trainer)
        save_final_model(trainer)  # the model, its code files and the processor
        if train_result is not None:  # else train_results.json is the finished run's
            trainer.log_metrics("train", train_result.metrics)
            trainer.save_metrics("train", train_result.metrics)
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)  # OUT/eval_results.json
        if trainer.is_world_process_zero():
            print(f"{task.metric} on the {task.evaluated_on}: {metrics[f'eval_{task.metric}']:.4f}")
            logger.info("Saved the fine-tuned model to %s", training_args.output_dir)
    return metrics


if __name__ == "__main__":
    run_script(main, sys.argv[1:], "finetune.py")  # a bad config value or file: one line; a bug: its traceback
