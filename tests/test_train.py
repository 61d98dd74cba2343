"""Pretraining through `training/train.py`: learning, schedules, SIGKILL resume, freezing, 2 processes, bad data."""

import dataclasses
import itertools
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_CONFIG, load_script, two_process_launcher, write_audio
from safetensors.torch import load_file

from spidr_hf import SpidrConfig, SpidrForPreTraining
from spidr_hf.pretraining.data import DataArguments, PretrainingData
from spidr_hf.pretraining.setup import build_model, parse_pretraining_config
from spidr_hf.pretraining.trainer import SpidrTrainer, SpidrTrainingArguments

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "training" / "train.py"

# The script itself: tests run its `main` with a recording SpidrTrainer in place of its own
train = load_script(TRAIN_SCRIPT, "spidr_train")


def tiny_run_config(dataset: Path, output_dir: Path, **overrides) -> dict:
    """A run of a tiny model that takes well under a second per step on 2 CPU cores."""
    model_config = {
        **TINY_CONFIG,
        "conv_dim": list(TINY_CONFIG["conv_dim"]),
        "ema_timescale": 20,
        **overrides.pop("model_config", {}),
    }
    return {
        "objective": "spidr",
        "model_config": model_config,
        "dataset": str(dataset),
        "train_split": "train",
        "max_batch_samples": 96_000,
        "min_samples": 4_000,
        "max_samples": 32_000,
        "num_buckets": 4,
        "output_dir": str(output_dir),
        "max_steps": 30,
        "learning_rate": 2e-3,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-6,
        "weight_decay": 0.01,
        "max_grad_norm": 10.0,
        "warmup_steps": 3,
        "lr_hold_steps": 100,
        "lr_decay_steps": 100,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        **overrides,
    }


def write_config(folder: Path, config: dict) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_script(script: str, args: list[str], launcher: list[str] | None = None, check: bool = True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "warning"}
    command = [*(launcher or [sys.executable]), script, *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def training_logs(log_history: list[dict]) -> list[dict]:
    return [entry for entry in log_history if "loss" in entry]


def train_and_record(config_path: Path) -> list[dict]:
    """Run `train.py` in this process and return everything its trainer logged."""
    trainer_log = []

    class Recorder(train.SpidrTrainer):
        def log(self, logs, start_time=None):
            super().log(logs, start_time)
            trainer_log.append(dict(logs))

    original_trainer = train.SpidrTrainer
    train.SpidrTrainer = Recorder
    try:
        train.main([str(config_path)])
    finally:
        train.SpidrTrainer = original_trainer
    return trainer_log


@pytest.mark.slow
def test_tiny_model_learns_and_the_teacher_follows(corpus, tmp_path):
    config = tiny_run_config(corpus, tmp_path / "run", eval_split="dev", eval_strategy="steps", eval_steps=15)
    initial = build_model(parse_pretraining_config([str(write_config(tmp_path, config))])[0])
    trainer_log = train_and_record(tmp_path / "config.yaml")
    logs = training_logs(trainer_log)
    assert len(logs) == config["max_steps"]
    losses = [entry["loss"] for entry in logs]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    for entry in logs:
        assert math.isfinite(entry["target_perplexity"]) and 1 <= entry["target_perplexity"] <= 16
        assert math.isfinite(entry["prediction_perplexity"]) and 1 <= entry["prediction_perplexity"] <= 16
    # The log reports the decay of each optimizer step (the schedule itself is checked against the reference in
    # test_parity.py::test_teacher_update)
    for index, entry in enumerate(logs, start=1):
        assert entry["teacher_decay"] == pytest.approx(initial.teacher_decay(index))
    assert logs[0]["teacher_decay"] != pytest.approx(logs[-1]["teacher_decay"])
    assert logs[-1]["audio_hours_seen"] > logs[0]["audio_hours_seen"] > 0
    assert any("eval_loss" in entry for entry in trainer_log)

    final = load_file(tmp_path / "run" / "model.safetensors")
    start = initial.state_dict()
    assert not torch.equal(final["codebooks.codebook"], start["codebooks.codebook"])
    assert not torch.equal(final["codebooks.counts"], start["codebooks.counts"])
    moved = (
        final["teacher.layers.0.feed_forward.output_dense.weight"]
        - start["teacher.layers.0.feed_forward.output_dense.weight"]
    )
    assert moved.abs().max() > 0
    # The teacher is an EMA of the student: it moves towards the student's weights
    student = final["spidr.encoder.layers.0.feed_forward.output_dense.weight"]
    teacher = final["teacher.layers.0.feed_forward.output_dense.weight"]
    before = start["teacher.layers.0.feed_forward.output_dense.weight"]
    assert (student - teacher).norm() < (student - before).norm()
    assert (tmp_path / "run" / "preprocessor_config.json").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["auto_map"]["AutoModel"].endswith("SpidrModel")


KILL_LAUNCHER = textwrap.dedent(
    """
    import importlib.util, os, signal, sys
    from transformers import TrainerCallback

    spec = importlib.util.spec_from_file_location("spidr_train", {train_script!r})
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    kill_at = int(sys.argv[1])

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a crash, right after the checkpoint is on disk

    class Trainer(train.SpidrTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAfterSave())

    train.SpidrTrainer = Trainer
    train.main(sys.argv[2:])
    """
)


# The small-batch remedy: k-means codebooks at the start (not again when resuming) and restarts that depend on the
# codebook usage kept in the checkpoint
REMEDY = {"codebook_init_batches": 2, "model_config": {"codebook_size": 64, "codebook_restart_after": 2}}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("freeze_step", "remedy"),
    [(1000, {}), (4, {}), (1000, REMEDY)],
    ids=["before-freeze", "after-freeze", "small-batch-remedy"],
)
def test_resume_after_sigkill_continues_exactly(corpus, tmp_path, freeze_step, remedy):
    overrides = {
        "max_steps": 8,
        "save_strategy": "steps",
        "save_steps": 5,
        **remedy,
        "model_config": {"freeze_step": freeze_step, "layerdrop": 0.2, **remedy.get("model_config", {})},
    }
    straight = tiny_run_config(corpus, tmp_path / "straight", **overrides)
    config = write_config(tmp_path, straight)
    run_script(str(TRAIN_SCRIPT), [str(config)])

    killed = tiny_run_config(corpus, tmp_path / "killed", **overrides)
    (tmp_path / "killed_config").mkdir()
    config = write_config(tmp_path / "killed_config", killed)
    launcher = tmp_path / "kill_launcher.py"
    launcher.write_text(KILL_LAUNCHER.format(train_script=str(TRAIN_SCRIPT)))
    crashed = run_script(str(launcher), ["5", str(config)], check=False)
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    assert (tmp_path / "killed" / "checkpoint-5").is_dir() and not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = run_script(str(TRAIN_SCRIPT), [str(config)])
    assert "Resuming from" in resumed.stderr
    if remedy:  # fitted at the start only: a resumed run keeps the codebooks of its checkpoint
        assert "by k-means" in crashed.stderr and "by k-means" not in resumed.stderr

    expected = load_file(tmp_path / "straight" / "model.safetensors")
    actual = load_file(tmp_path / "killed" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.allclose(actual[key], value, rtol=0, atol=1e-6), key
    if freeze_step < 5:
        # Frozen from step 4: the feature encoder does not move after that, resumed or not
        at_checkpoint = load_file(tmp_path / "killed" / "checkpoint-5" / "model.safetensors")
        conv = "spidr.feature_extractor.conv_layers.0.conv.weight"
        assert torch.equal(actual[conv], at_checkpoint[conv])
        projection = "spidr.feature_projection.projection.weight"
        assert torch.equal(actual[projection], at_checkpoint[projection])
        assert not torch.equal(actual["heads.0.weight"], at_checkpoint["heads.0.weight"])


RANK_LAUNCHER = textwrap.dedent(
    """
    import importlib.util, json, sys
    import torch
    from transformers import TrainerCallback

    spec = importlib.util.spec_from_file_location("spidr_train", {train_script!r})
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    out = sys.argv[1]

    class DumpState(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            torch.save(model.state_dict(), f"{{out}}/rank{{args.process_index}}.pt")
            if args.process_index == 0:
                with open(f"{{out}}/log_history.json", "w") as f:
                    json.dump(state.log_history, f)

    class Trainer(train.SpidrTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(DumpState())

    train.SpidrTrainer = Trainer
    train.main(sys.argv[2:])
    """
)


@pytest.mark.slow
def test_two_processes_keep_codebooks_and_teacher_identical(corpus, tmp_path):
    config = tiny_run_config(
        corpus,
        tmp_path / "run",
        max_steps=3,
        model_config={"hidden_dropout": 0.0, "attention_dropout": 0.0},
    )
    config_path = write_config(tmp_path, config)
    launcher = tmp_path / "rank_launcher.py"
    launcher.write_text(RANK_LAUNCHER.format(train_script=str(TRAIN_SCRIPT)))
    run_script(str(launcher), [str(tmp_path), str(config_path)], launcher=two_process_launcher())

    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key

    # The first step's loss is the mean over the masked frames of both processes' batches
    model_args, data_args, training_args = parse_pretraining_config([str(config_path)])
    from transformers import set_seed

    set_seed(0)
    model = build_model(model_args).eval()
    batches = PretrainingData.load(data_args, training_args).train_dataloader(model.config)
    loss_sum, frames = 0.0, 0
    for inputs in itertools.islice(batches, 2):  # process r takes batch r
        inputs.pop("num_skipped")
        with torch.no_grad():
            output = model(**inputs)
        loss_sum += output.loss.item() * output.mask_time_indices.sum().item()
        frames += output.mask_time_indices.sum().item()
    first_loss = training_logs(json.loads((tmp_path / "log_history.json").read_text()))[0]["loss"]
    assert first_loss == pytest.approx(loss_sum / frames, abs=1e-4)


@pytest.mark.slow
def test_unreadable_and_short_files_are_skipped_and_counted(corpus, tmp_path, caplog):
    from datasets import load_from_disk

    folder = tmp_path / "audio"
    folder.mkdir()
    train_split = load_from_disk(str(corpus))["train"]
    for index in range(8):
        samples = train_split[index]["audio"].get_all_samples().data[0].numpy()
        write_audio(folder / f"good{index}.wav", samples)
    (folder / "garbage.wav").write_bytes(os.urandom(5000))  # no readable header
    write_audio(folder / "short.wav", np.random.default_rng(0).standard_normal(800))  # 50 ms
    write_audio(folder / "broken.flac", train_split[0]["audio"].get_all_samples().data[0].numpy())
    data = bytearray((folder / "broken.flac").read_bytes())
    for i in range(200, len(data)):  # a valid header, then corrupt frames: fails only when decoded
        data[i] = (data[i] * 7 + 13) % 256
    (folder / "broken.flac").write_bytes(bytes(data))

    config = tiny_run_config(folder, tmp_path / "run", max_steps=-1, num_train_epochs=1)
    with caplog.at_level(logging.WARNING):
        trainer_log = train_and_record(write_config(tmp_path, config))
    assert "Left out of training: 1 unreadable and 1 too short" in caplog.text
    logs = training_logs(trainer_log)
    assert logs[-1]["skipped_unreadable"] == 1  # broken.flac, found when decoding
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_tri_stage_schedule_matches_the_reference():
    from spidr.config import OptimizerConfig
    from spidr.optimizer import build_scheduler

    from spidr_hf.pretraining.trainer import tri_stage_schedule

    parameter = torch.nn.Parameter(torch.zeros(1))
    reference_optimizer = torch.optim.SGD([parameter], lr=5e-4)
    reference = build_scheduler(
        reference_optimizer, OptimizerConfig(lr=5e-4, warmup_steps=7, hold_steps=11, decay_steps=13)
    )
    ours_optimizer = torch.optim.SGD([parameter], lr=5e-4)
    ours = tri_stage_schedule(ours_optimizer, 7, 11, 13)
    for _ in range(40):
        assert ours.get_last_lr()[0] == pytest.approx(reference.get_last_lr()[0], rel=1e-12)
        reference_optimizer.step()
        ours_optimizer.step()
        reference.step()
        ours.step()


# Runs the recipes' arguments on a CPU without their trackers and evaluations
CPU_RUN = [
    "--bf16=false",
    "--torch_compile=false",
    "--optim=adamw_torch",
    "--use_cpu=true",
    "--report_to=none",
    "--eval_strategy=no",
]


def learning_rates(scheduler, steps: int) -> list[float]:
    """The learning rate of each of the first `steps` optimizer steps."""
    rates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the schedule steps without optimizer steps
        for _ in range(steps):
            rates.append(scheduler.get_last_lr()[0])
            scheduler.step()
    return rates


def trainer_schedule(args: SpidrTrainingArguments) -> list[float]:
    """The learning rates of the whole run that SpidrTrainer sets up from `args`."""
    trainer = SpidrTrainer(model=SpidrForPreTraining(SpidrConfig(**TINY_CONFIG)), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    return learning_rates(trainer.lr_scheduler, args.max_steps)


@pytest.mark.parametrize("name", ["spidr_base_librispeech", "dinosr_base_librispeech", "quickstart_cpu"])
def test_recipes_follow_the_reference_tri_stage_schedule(name, tmp_path):
    """The recipes name the paper's schedule, and the trainer's learning rate is the reference's at every step."""
    from spidr.config import OptimizerConfig
    from spidr.optimizer import build_scheduler

    config = ROOT / "training" / "configs" / f"{name}.yaml"
    _, _, args = parse_pretraining_config([str(config), *CPU_RUN, f"--output_dir={tmp_path}"])
    assert args.lr_scheduler_type == "tri_stage"
    reference_settings = OptimizerConfig(
        lr=args.learning_rate,
        warmup_steps=args.warmup_steps,
        hold_steps=args.lr_hold_steps,
        decay_steps=args.lr_decay_steps,
        init_lr_scale=args.lr_init_scale,
        final_lr_scale=args.lr_final_scale,
    )
    reference_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    reference = learning_rates(build_scheduler(reference_optimizer, reference_settings), args.max_steps)
    np.testing.assert_allclose(trainer_schedule(args), reference, rtol=1e-9, atol=0)


def test_other_schedules_come_from_transformers_and_unknown_ones_are_refused(tmp_path):
    from transformers import get_cosine_schedule_with_warmup

    config = write_config(tmp_path, tiny_run_config(Path("somewhere"), tmp_path / "run"))
    _, _, args = parse_pretraining_config([str(config), "--lr_scheduler_type=cosine"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    expected = learning_rates(get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps), 30)
    np.testing.assert_allclose(trainer_schedule(args), expected, rtol=1e-12, atol=0)
    # A name neither ours nor transformers' is a one-line error that lists the choices
    with pytest.raises(ValueError, match=r"lr_scheduler_type.*tri_stage.*cosine.*got 'tristage'") as error:
        parse_pretraining_config([str(config), "--lr_scheduler_type=tristage"])
    assert "\n" not in str(error.value)


def usable_utterances(dataset, min_samples: int) -> int:
    from spidr_hf.pretraining.data import audio_lengths

    return int((audio_lengths(dataset) >= min_samples).sum())


def test_pretraining_data_batches_every_usable_utterance_once(corpus, tmp_path):
    """Map-style and streamed training splits and the evaluation split, as `DataArguments` describe them."""
    data_args = DataArguments(
        dataset=str(corpus), eval_split="dev", max_batch_samples=128_000, min_samples=60_000, max_samples=64_000
    )
    training_args = SpidrTrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=10, report_to="none")
    endless = SpidrTrainingArguments(output_dir=str(tmp_path), use_cpu=True, num_train_epochs=1, report_to="none")
    config = SpidrConfig(**TINY_CONFIG)
    data = PretrainingData.load(data_args, training_args)
    streamed = PretrainingData.load(dataclasses.replace(data_args, streaming=True, streaming_buffer=8), training_args)
    expected = usable_utterances(data.train_dataset, data_args.min_samples)
    assert 0 < expected < len(data.train_dataset)  # some utterances are too short
    for loader in (data.train_dataloader(config), streamed.train_dataloader(config)):
        batches = [batch for batch in loader if "input_values" in batch]
        assert sum(len(batch["input_values"]) for batch in batches) == expected
        assert all(batch["input_values"].numel() <= data_args.max_batch_samples for batch in batches)
    # Evaluation: its own split, the same crops and masks every time; another split gets its lengths read
    first, again = list(data.eval_dataloader(config)), list(data.eval_dataloader(config))
    assert sum(len(batch["input_values"]) for batch in first) == usable_utterances(
        data.eval_dataset, data_args.min_samples
    )
    for batch, repeated in zip(first, again, strict=True):
        assert torch.equal(batch["input_values"], repeated["input_values"])
        assert torch.equal(batch["mask_time_indices"], repeated["mask_time_indices"])
    other = data.eval_dataloader(config, dataset=data.train_dataset)
    assert sum(len(batch["input_values"]) for batch in other) == expected
    with pytest.raises(ValueError, match="Streaming needs max_steps"):
        PretrainingData.load(dataclasses.replace(data_args, streaming=True), endless)


def test_bucket_batches_are_bounded_deterministic_and_fixed_in_number():
    from spidr_hf.pretraining.data import UNREADABLE, BucketBatchSampler

    lengths = np.random.default_rng(0).integers(1000, 40_000, size=300)
    lengths[:3] = UNREADABLE
    sampler = BucketBatchSampler(lengths, 100_000, 2_000, 32_000, num_buckets=10, seed=3)
    assert sampler.num_dropped["unreadable"] == 3
    assert sampler.num_dropped["too_short"] == int(((lengths >= 0) & (lengths < 2000)).sum())
    first = list(sampler)
    kept = sorted(index for batch in first for index, _ in batch)
    assert kept == sorted(np.flatnonzero(lengths >= 2000).tolist())
    for batch in first:
        assert sum(min(lengths[index], 32_000) for index, _ in batch) <= 100_000
        assert len({seed for _, seed in batch}) == 1
    assert first == list(BucketBatchSampler(lengths, 100_000, 2_000, 32_000, num_buckets=10, seed=3))
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(second) == len(first) and second != first
    padded = BucketBatchSampler(lengths, 100_000, 2_000, 32_000, num_buckets=10, seed=3, pad=True)
    for batch in padded:
        assert len(batch) * max(min(lengths[index], 32_000) for index, _ in batch) <= 100_000


def test_collator_crops_to_the_shortest_and_masks_valid_frames_only():
    from spidr_hf import SpidrConfig
    from spidr_hf.pretraining.data import SpeechCollator, SpeechItem

    config = SpidrConfig(**TINY_CONFIG)
    rng = np.random.default_rng(0)
    items = [SpeechItem(rng.standard_normal(n).astype(np.float32), seed=7) for n in (9000, 12000, 7000)]
    items.append(SpeechItem(None, seed=7, error="corrupt"))
    items.append(SpeechItem(rng.standard_normal(100).astype(np.float32), seed=7))
    cropped = SpeechCollator(config, min_samples=4000, max_samples=32000)(items)
    assert cropped["input_values"].shape == (3, 7000)
    assert "attention_mask" not in cropped
    assert cropped["num_skipped"].tolist() == [1, 1, 0]
    assert len(set(cropped["mask_time_indices"].sum(1).tolist())) == 1
    # Each row is a window of its standardized utterance
    for row, item in enumerate(items[:3]):
        standardized = (item.audio - item.audio.mean()) / np.sqrt(item.audio.var() + 1e-5)
        window = cropped["input_values"][row].numpy()
        offsets = [
            o for o in range(len(standardized) - 6999) if np.allclose(standardized[o : o + 7000], window, atol=1e-5)
        ]
        assert offsets
    again = SpeechCollator(config, min_samples=4000, max_samples=32000)(items)
    assert torch.equal(again["input_values"], cropped["input_values"])
    assert torch.equal(again["mask_time_indices"], cropped["mask_time_indices"])

    padded = SpeechCollator(config, min_samples=4000, max_samples=32000, pad=True)(items[:3])
    assert padded["input_values"].shape == (3, 12000)
    assert padded["attention_mask"].sum(1).tolist() == [9000, 12000, 7000]
    frames = [int(n) for n in (27, 37, 21)]
    for row, n in enumerate(frames):
        assert not padded["mask_time_indices"][row, n:].any()


def test_config_file_and_overrides(tmp_path):
    config = tiny_run_config(Path("somewhere"), tmp_path / "run")
    path = write_config(tmp_path, config)
    model_args, data_args, training_args = parse_pretraining_config(
        [str(path), "--max_steps=7", "--model_config.num_hidden_layers=3", "--pad=true", "--save_strategy=no"]
    )
    assert training_args.max_steps == 7 and data_args.pad is True and training_args.save_strategy == "no"
    assert model_args.model_config["num_hidden_layers"] == 3
    assert build_model(model_args).config.num_hidden_layers == 3
    with pytest.raises(ValueError, match="--key=value"):
        parse_pretraining_config([str(path), "--max_steps", "7"])
    with pytest.raises(ValueError):
        parse_pretraining_config([str(path), "--not_an_option=1"])
    with pytest.raises(ValueError, match="num_codebooks"):
        build_model(parse_pretraining_config([str(path), "--model_config.num_codebooks=9"])[0])
    # A mistyped model setting is an error naming the closest one, not a silent extra entry of config.json
    with pytest.raises(ValueError, match="Unknown model_config key 'hiden_size'; did you mean 'hidden_size'"):
        build_model(parse_pretraining_config([str(path), "--model_config.hiden_size=64"])[0])


@pytest.mark.slow
def test_quickstart_config_trains_and_writes_a_loadable_model(corpus, tmp_path):
    """The README's quickstart config, cut to a few steps, runs on the built-in corpus and leaves a usable folder."""
    output = tmp_path / "quickstart"
    config = ROOT / "training" / "configs" / "quickstart_cpu.yaml"
    run_script(
        str(TRAIN_SCRIPT),
        [str(config), f"--dataset={corpus}", f"--output_dir={output}", "--max_steps=3", "--report_to=none"],
    )
    model = SpidrForPreTraining.from_pretrained(output)
    assert model.config.feat_extract_norm == "group" and model.config.num_codebooks == 3
    units = model.get_units(torch.randn(1, 16_000), layer=6)
    assert units.shape == (1, 49) and units.dtype == torch.long
    # Hub-ready as it is: AutoModel, the feature extractor and both pipelines load it with trust_remote_code in a
    # fresh interpreter without spidr_hf, and give this model's features and units
    from spidr_hf.hub.release import check_release_folder
    from spidr_hf.model.feature_extraction_spidr import SpidrFeatureExtractor

    assert (output / "pipeline_spidr.py").is_file()
    check_release_folder(output, model.eval(), SpidrFeatureExtractor(), layer=6)


@pytest.mark.slow
def test_a_finished_run_run_again_leaves_its_model_as_it_was(corpus, tmp_path):
    """As `scripts/quickstart.sh` run twice: the rerun resumes from the last checkpoint, at max_steps, and trains
    nothing (the Trainer alone would take step max_steps + 1 and save another model)."""
    output = tmp_path / "run"
    config = write_config(tmp_path, tiny_run_config(corpus, output, max_steps=3, save_strategy="steps", save_steps=3))
    train.main([str(config)])
    weights = (output / "model.safetensors").read_bytes()
    train.main([str(config)])
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-3"]
    assert (output / "model.safetensors").read_bytes() == weights
    # A killed run whose last checkpoint is its last step: the rerun saves that checkpoint's model
    (output / "model.safetensors").unlink()
    train.main([str(config)])
    assert (output / "model.safetensors").read_bytes() == weights


@pytest.mark.slow
def test_training_never_overwrites_a_saved_model_it_cannot_resume(tmp_path):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "config.json").write_text('{"mine": 1}')
    config = write_config(tmp_path, tiny_run_config(Path("somewhere"), output))
    with pytest.raises(ValueError, match="already holds a saved model"):
        train.main([str(config)])
    assert (output / "config.json").read_text() == '{"mine": 1}'
    result = run_script(str(TRAIN_SCRIPT), [str(config)], check=False)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("train.py: error: output_dir")


@pytest.mark.parametrize("objective", ["spidr", "dinosr"])
def test_paper_recipes(objective):
    """The LibriSpeech configs hold the paper recipe (bf16 and the fused optimizer need a GPU, hence the overrides)."""
    path = ROOT / "training" / "configs" / f"{objective}_base_librispeech.yaml"
    cpu = ["--bf16=false", "--torch_compile=false", "--optim=adamw_torch", "--use_cpu=true"]
    model_args, data_args, args = parse_pretraining_config([str(path), *cpu])
    assert model_args.objective == objective and model_args.model_config == {}
    assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (5e-4, 0.9, 0.95, 1e-6)
    assert (args.weight_decay, args.max_grad_norm, args.max_steps) == (0.01, 10.0, 400_000)
    assert args.lr_scheduler_type == "tri_stage"
    assert (args.warmup_steps, args.lr_hold_steps, args.lr_decay_steps) == (12_000, 188_000, 200_000)
    assert (data_args.max_batch_samples, data_args.min_samples, data_args.max_samples) == (3_800_000, 2_000, 320_000)
    assert data_args.num_buckets == 1000 and data_args.pad is False
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="bf16"):
            parse_pretraining_config([str(path)])  # as written, the recipe needs a GPU


@pytest.mark.parametrize(("name", "processes"), [("spidr_base_1gpu", 1), ("spidr_base_8gpu", 8)])
def test_fewer_gpu_recipes_keep_the_paper_global_batch(name, processes):
    """1 and 8 GPU recipes: the paper's recipe, with accumulation making up its 16 GPUs of 3.8M samples."""
    cpu = ["--bf16=false", "--torch_compile=false", "--optim=adamw_torch", "--use_cpu=true"]
    paper = parse_pretraining_config([str(ROOT / "training" / "configs" / "spidr_base_librispeech.yaml"), *cpu])
    variant = parse_pretraining_config([str(ROOT / "training" / "configs" / f"{name}.yaml"), *cpu])
    _, data_args, args = variant
    assert data_args.max_batch_samples * args.gradient_accumulation_steps * processes == 16 * 3_800_000
    assert args.output_dir.endswith(name)
    # Everything else is the paper's recipe
    for ours, theirs in zip(variant, paper, strict=True):
        differences = {
            field.name
            for field in dataclasses.fields(ours)
            if getattr(ours, field.name) != getattr(theirs, field.name)
            and field.name not in ("gradient_accumulation_steps", "output_dir", "logging_dir")
        }
        assert not differences


def test_config_files_extend_others(tmp_path):
    base = tiny_run_config(Path("somewhere"), tmp_path / "run")
    write_config(tmp_path, base)
    (tmp_path / "variant.yaml").write_text(
        "extends: config.yaml\nmax_steps: 9\nmodel_config:\n  codebook_restart_after: 4\n"
    )
    model_args, _, args = parse_pretraining_config([str(tmp_path / "variant.yaml"), "--learning_rate=0.01"])
    assert args.max_steps == 9 and args.learning_rate == 0.01 and args.warmup_steps == base["warmup_steps"]
    # model_config entries are overridden one by one
    assert model_args.model_config == {**base["model_config"], "codebook_restart_after": 4}
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        parse_pretraining_config([str(tmp_path / "loop.yaml")])
    (tmp_path / "orphan.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ValueError, match=r"missing\.yaml not found"):
        parse_pretraining_config([str(tmp_path / "orphan.yaml")])
