"""Fine-tuning on SUPERB's phone recognition and speaker identification (training/finetune.py)."""

import json
import logging
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, load_script

from spidr_hf import SpidrConfig, SpidrFeatureExtractor
from spidr_hf.errors import SpidrError, is_user_error
from spidr_hf.finetuning.tasks import (
    PAD,
    AudioCollator,
    FinetuneArguments,
    FinetuneTrainer,
    open_corpus_split,
    phone_datasets,
    phone_error_rate,
    phone_string,
    speaker_split,
)
from spidr_hf.model.modeling_spidr import SpidrForCTC
from spidr_hf.model.pipeline_spidr import load_audio

ROOT = Path(__file__).resolve().parents[1]
PHONES_CONFIG = ROOT / "training/configs/finetune_phones_cpu.yaml"
SPEAKERS_CONFIG = ROOT / "training/configs/finetune_speakers_cpu.yaml"
# A few steps of the tiny model; evaluation one utterance at a time, as the pipelines run
QUICK = ["--per_device_train_batch_size=4", "--per_device_eval_batch_size=1", "--logging_steps=1"]
QUICK += ["--dataloader_num_workers=0", "--report_to=none"]


@pytest.fixture(scope="module")
def finetune():
    return load_script(ROOT / "training/finetune.py", "finetune_script").main


@pytest.fixture(scope="module")
def speakers_corpus(tmp_path_factory) -> Path:
    """A tiny corpus whose train split has 2 speakers (the shared one has 1)."""
    from spidr_hf.data.corpus import build_corpus

    folder = tmp_path_factory.mktemp("speakers-corpus")
    build_corpus(folder, hours=0.03, num_speakers=3, dev_speakers=1, seed=0)
    return folder


def pipeline_outputs(tmp_path: Path, task: str, model: Path, audio: list[np.ndarray]) -> dict:
    """What `pipeline(task, model, trust_remote_code=True)` gives each audio in a fresh interpreter without spidr_hf."""
    audio_file = tmp_path / "audio.npz"
    np.savez(audio_file, *audio)
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from transformers import pipeline
        pipe = pipeline({task!r}, model={str(model)!r}, trust_remote_code=True)
        audio = np.load({str(audio_file)!r})
        outputs = [pipe({{"raw": audio[f"arr_{{i}}"], "sampling_rate": 16000}}) for i in range(len(audio.files))]
        result = {{"outputs": outputs, "imported_spidr_hf": "spidr_hf" in sys.modules}}
        print(json.dumps(result, default=lambda array: np.asarray(array).tolist()))  # features are arrays
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert not result["imported_spidr_hf"]  # the folder's own code runs it
    return result["outputs"]


def split_audio_and_column(corpus: Path, split: str, column: str) -> tuple[list[np.ndarray], list]:
    dataset = open_corpus_split(str(corpus), split, ("id", "audio", column))
    return [load_audio(row["audio"], None, 16000) for row in dataset], list(dataset[column])


def test_phone_labels_decode_to_the_corpus_phones_and_batches_pad(corpus):
    args = FinetuneArguments(task="phones", model_name_or_path="unused", dataset=str(corpus))
    tokenizer, train, evaluation = phone_datasets(args)
    vocabulary = tokenizer.get_vocab()
    assert vocabulary[PAD] == tokenizer.pad_token_id == 0 and "pau" not in vocabulary  # pauses are no targets
    for split, dataset in (("train", train), ("dev", evaluation)):
        phones = open_corpus_split(str(corpus), split, ("id", "audio", "phones"))["phones"]
        expected = [phone_string(row, ["pau"]) for row in phones]
        assert [tokenizer.decode(labels, group_tokens=False) for labels in dataset["labels"]] == expected
        assert all(" " not in token for token in vocabulary) and all(expected)
    # Multi-letter phones are one token each: "hh" is not "h h"
    assert any(len(phone) > 1 for phone in vocabulary if phone in expected[0].split())
    # The collator pads audio with an attention mask and labels with -100
    rows = [train[0], train[1]]
    batch = AudioCollator(SpidrFeatureExtractor())(rows)
    assert batch["attention_mask"].sum(-1).tolist() == [row["length"] for row in rows]
    for row, labels in zip(rows, batch["labels"], strict=True):
        assert labels[labels != -100].tolist() == row["labels"]
        assert (labels[len(row["labels"]) :] == -100).all()


def test_ctc_predictions_of_a_padded_batch_are_those_of_each_utterance_alone(tmp_path):
    torch.manual_seed(0)
    config = SpidrConfig(**TINY_CONFIG, vocab_size=6, pad_token_id=0)
    model = SpidrForCTC(config).eval()
    trainer = FinetuneTrainer(model=model, args=_training_args(tmp_path))
    audio = [np.random.default_rng(seed).standard_normal(samples) for seed, samples in ((1, 8000), (2, 5000))]
    rows = [{"audio": {"array": samples, "sampling_rate": 16000}, "labels": [1, 2]} for samples in audio]
    batch = AudioCollator(SpidrFeatureExtractor())(rows)
    _, tokens, _ = trainer.prediction_step(model, dict(batch), prediction_loss_only=False)
    frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).tolist()
    assert frames[1] < tokens.shape[1]
    assert (tokens[1, frames[1] :] == config.pad_token_id).all()  # padding decodes to blanks, to nothing
    for row, length in enumerate(frames):
        with torch.no_grad():
            alone = model(batch["input_values"][row : row + 1, : batch["attention_mask"][row].sum()]).logits[0]
        top2 = alone.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-3
        assert torch.equal(tokens[row, :length][clear], alone.argmax(-1)[clear])


def _training_args(tmp_path: Path):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)


def test_the_sid_split_holds_out_utterances_of_training_speakers():
    ids = [f"{speaker}-{index:05d}" for speaker in ("a", "b", "c") for index in range(40)] + ["lonely-00000"]
    speakers = [id.split("-")[0] for id in ids]
    test = speaker_split(ids, speakers, 0.25)
    assert test == speaker_split(ids, speakers, 0.25)  # the same split on every run
    train_ids = {id for id, is_test in zip(ids, test, strict=True) if not is_test}
    test_ids = {id for id, is_test in zip(ids, test, strict=True) if is_test}
    assert not train_ids & test_ids and 15 < len(test_ids) < 45
    train_speakers = {speaker for speaker, is_test in zip(speakers, test, strict=True) if not is_test}
    assert {speaker for speaker, is_test in zip(speakers, test, strict=True) if is_test} <= train_speakers
    assert "lonely-00000" in train_ids  # a speaker's only utterance is a training one, whatever its hash


def test_random_init_is_the_architecture_with_seeded_new_weights(corpus, source_dir):
    from transformers import set_seed

    from spidr_hf.finetuning.tasks import build_task

    def encoder_weights(seed: int, **options) -> dict[str, torch.Tensor]:
        set_seed(seed)  # what finetune.py does before building the task
        arguments = FinetuneArguments(task="phones", model_name_or_path=str(source_dir), dataset=str(corpus), **options)
        return {name: value for name, value in build_task(arguments).model.state_dict().items() if ".encoder." in name}

    # source_dir's weights were drawn from seed 0: another seed gives other weights
    pretrained, drawn, drawn_again = (
        encoder_weights(1),
        encoder_weights(1, random_init=True),
        encoder_weights(1, random_init=True),
    )
    assert pretrained.keys() == drawn.keys()
    assert all(torch.equal(drawn[name], drawn_again[name]) for name in drawn)  # the same baseline on every run
    matrices = [name for name in drawn if drawn[name].dim() > 1]  # norms and biases start at 1 and 0 either way
    assert matrices and not any(torch.equal(drawn[name], pretrained[name]) for name in matrices)
    seed_zero = encoder_weights(0, random_init=True)
    assert all(torch.equal(seed_zero[name], pretrained[name]) for name in drawn)  # the same draw as source_dir's


def test_log_mel_heads_read_the_evaluation_log_mel_and_a_padded_batch_is_each_item_alone():
    from spidr_hf.evaluation.features import log_mel
    from spidr_hf.finetuning.log_mel_heads import LogMelForCTC, LogMelForSequenceClassification

    config = SpidrConfig(**TINY_CONFIG, vocab_size=7, pad_token_id=0, num_labels=3, classifier_proj_size=16)
    audio = [np.random.default_rng(seed).normal(size=size).astype(np.float32) for seed, size in ((0, 9000), (1, 4000))]
    batch = SpidrFeatureExtractor()(audio, sampling_rate=16_000, padding="longest", return_tensors="pt")
    torch.manual_seed(0)
    for head in (LogMelForCTC(config).eval(), LogMelForSequenceClassification(config).eval()):
        frames, frame_mask = head.log_mel_frames(batch["input_values"], batch["attention_mask"])
        for index, item in enumerate(audio):
            alone = SpidrFeatureExtractor()(item, sampling_rate=16_000, return_tensors="pt")["input_values"]
            expected = log_mel(alone[0].numpy())
            assert int(frame_mask[index].sum()) == len(expected)
            torch.testing.assert_close(frames[index, : len(expected)], expected, atol=1e-4, rtol=1e-4)
            together, single = head(**batch).logits[index], head(alone).logits[0]
            torch.testing.assert_close(together[: len(single)] if together.dim() > 1 else together, single)
    labels = torch.tensor([[1, 2, 3], [4, -100, -100]])
    assert torch.isfinite(LogMelForCTC(config)(**batch, labels=labels).loss)


@pytest.mark.slow
def test_log_mel_upstream_fine_tunes_through_the_same_script(finetune, corpus, source_dir, tmp_path):
    out = tmp_path / "log-mel"
    argv = [str(PHONES_CONFIG), f"--model_name_or_path={source_dir}", f"--dataset={corpus}", f"--output_dir={out}"]
    metrics = finetune([*argv, *QUICK, "--upstream=log_mel", "--max_steps=3", "--save_steps=3"])
    assert json.loads((out / "eval_results.json").read_text())["eval_per"] == metrics["eval_per"] > 0
    from safetensors.torch import load_file

    assert set(load_file(out / "model.safetensors")) == {"lm_head.weight", "lm_head.bias"}  # the head alone


@pytest.mark.slow
def test_phone_recognition_writes_a_hub_folder_whose_pipeline_gives_phones(finetune, corpus, source_dir, tmp_path):
    out = tmp_path / "phones"
    argv = [str(PHONES_CONFIG), f"--model_name_or_path={source_dir}", f"--dataset={corpus}", f"--output_dir={out}"]
    metrics = finetune([*argv, *QUICK, "--max_steps=3", "--save_steps=3", "--learning_rate=1e-4"])
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_per"] == metrics["eval_per"]
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCTC"] == "modeling_spidr.SpidrForCTC"
    for name in ("model.safetensors", "modeling_spidr.py", "vocab.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name

    audio, phones = split_audio_and_column(corpus, "dev", "phones")
    # The folder is as Hub-ready as any other SpidR folder: its student's features pipeline too, and its checkpoints
    assert set(config["custom_pipelines"]) == {"spidr-features"} and (out / "pipeline_spidr.py").is_file()
    assert (out / "checkpoint-3" / "pipeline_spidr.py").is_file()
    features = pipeline_outputs(tmp_path, "spidr-features", out, audio[:1])[0]["features"]
    assert np.asarray(features).shape[1] == json.loads((out / "config.json").read_text())["hidden_size"]
    texts = [output["text"] for output in pipeline_outputs(tmp_path, "automatic-speech-recognition", out, audio)]
    vocabulary = set(json.loads((out / "vocab.json").read_text())) - {PAD}
    assert any(texts) and all(set(text.split()) <= vocabulary for text in texts)
    assert all(text == " ".join(text.split()) for text in texts)  # phones separated by single spaces
    references = [phone_string(row, ["pau"]) for row in phones]
    assert saved["eval_per"] == pytest.approx(phone_error_rate(references, texts), abs=1e-12)


@pytest.mark.slow
def test_speaker_identification_resumes_and_its_pipeline_names_speakers(
    finetune, speakers_corpus, source_dir, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="spidr_hf")
    out = tmp_path / "speakers"
    argv = [str(SPEAKERS_CONFIG), f"--model_name_or_path={source_dir}", f"--dataset={speakers_corpus}"]
    argv += [f"--output_dir={out}", "--test_fraction=0.3", *QUICK, "--save_steps=2"]
    finetune([*argv, "--max_steps=2"])
    # Going on with another model (or corpus) would train the first model's run on it: refused, naming it
    other = shutil.copytree(source_dir, tmp_path / "other-model")
    expected = f'model_name_or_path: "{source_dir}" -> "{other}"'
    with pytest.raises(SpidrError, match=re.escape(expected)):
        finetune([*argv, "--max_steps=4", f"--model_name_or_path={other}"])
    metrics = finetune([*argv, "--max_steps=4"])  # the folder has a checkpoint: the run goes on from it
    assert "Resuming from" in caplog.text and (out / "checkpoint-4").is_dir()
    assert json.loads((out / "checkpoint-4/trainer_state.json").read_text())["global_step"] == 4
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_accuracy"] == metrics["eval_accuracy"]

    audio, speakers = split_audio_and_column(speakers_corpus, "train", "speaker")
    ids = open_corpus_split(str(speakers_corpus), "train", ("id", "audio", "speaker"))["id"]
    test = speaker_split(ids, speakers, 0.3)
    test_audio = [a for a, is_test in zip(audio, test, strict=True) if is_test]
    test_speakers = [speaker for speaker, is_test in zip(speakers, test, strict=True) if is_test]
    assert test_speakers and set(test_speakers) <= {s for s, is_test in zip(speakers, test, strict=True) if not is_test}
    outputs = pipeline_outputs(tmp_path, "audio-classification", out, test_audio)
    names = sorted(set(speakers))
    assert json.loads((out / "config.json").read_text())["id2label"] == {str(i): n for i, n in enumerate(names)}
    assert all({label["label"] for label in output} == set(names) for output in outputs)
    top = [output[0]["label"] for output in outputs]
    expected = np.mean([guess == speaker for guess, speaker in zip(top, test_speakers, strict=True)])
    assert saved["eval_accuracy"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--task=words", "task must be one of phones, speakers, got 'words'"),
        ("--upstream=mfcc", "upstream must be one of spidr, log_mel, got 'mfcc'"),
        ("--dataset={tmp}/missing", "dataset {tmp}/missing not found"),
        ("--dataset={tmp}/no-phones", "The train split of {tmp}/no-phones lacks the column(s) phones"),
        ("--model_name_or_path={tmp}/no-model", "Cannot load the model {tmp}/no-model"),
        ("--model_config.final_dropot=0.1", "Unknown model_config key 'final_dropot'; did you mean 'final_dropout'?"),
        ("--model_config.num_attention_heads=3", "`hidden_size` (64) must be divisible by `num_attention_heads` (3)"),
        ("--model_config.hidden_size=32", "changes the shapes of the weights of {model} (hidden_size: 64 -> 32)"),
        ("--per_device_train_batch_size=0", "per_device_train_batch_size must be at least 1, got 0"),
    ],
)
def test_bad_config_values_are_one_line_errors(finetune, corpus, source_dir, tmp_path, override, message):
    from datasets import load_from_disk

    if "no-phones" in override:
        load_from_disk(str(corpus)).remove_columns("phones").save_to_disk(str(tmp_path / "no-phones"))
    argv = [str(PHONES_CONFIG), f"--model_name_or_path={source_dir}", f"--dataset={corpus}"]
    argv += [f"--output_dir={tmp_path / 'out'}", override.format(tmp=tmp_path)]
    with pytest.raises(ValueError) as error:
        finetune(argv)
    assert is_user_error(error.value) and message.format(tmp=tmp_path, model=source_dir) in str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_script_prints_a_bad_value_in_one_line(corpus, source_dir, tmp_path):
    command = [sys.executable, str(ROOT / "training/finetune.py"), str(SPEAKERS_CONFIG), "--task=words"]
    command += [f"--model_name_or_path={source_dir}", f"--dataset={corpus}", f"--output_dir={tmp_path}/out"]
    completed = subprocess.run(command, capture_output=True, text=True)
    assert completed.returncode == 1
    assert completed.stderr == "finetune.py: error: task must be one of phones, speakers, got 'words'\n"
