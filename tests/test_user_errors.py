"""Bad input from a user gives a clear one-line error, never a silently wrong result or a traceback (issue 12)."""

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_CONFIG, load_script, write_audio
from reference import build_reference, write_reference_checkpoint
from transformers import BertConfig, BertModel, pipeline

from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining, SpidrModel
from spidr_hf.model.loading import load
from spidr_hf.pretraining.data import DataArguments, PretrainingData, load_audio_dataset
from spidr_hf.pretraining.setup import ModelArguments, build_model, parse_pretraining_config
from spidr_hf.pretraining.trainer import SpidrTrainingArguments, check_checkpoint_fits
from spidr_hf.training.config import check_value_types, read_config_file
from spidr_hf_cli import main

RATE = 16000


def one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message.strip()


@pytest.fixture(scope="module")
def features():
    torch.manual_seed(0)
    model = SpidrModel(SpidrConfig(**TINY_CONFIG)).eval()
    return pipeline("spidr-features", model=model, feature_extractor=SpidrFeatureExtractor(), device="cpu")


def tone(seconds: float, rate: int) -> np.ndarray:
    time = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 220 * time)).astype(np.float32)


@pytest.mark.parametrize("bad_samples", ["one_nan", "all_nan", "one_inf"])
def test_non_finite_audio_is_refused_before_resampling(features, bad_samples):
    audio = tone(1.0, 8000)
    if bad_samples == "one_nan":
        audio[1234] = np.nan
    elif bad_samples == "all_nan":
        audio[:] = np.nan
    else:
        audio[10] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite") as error:
        features(audio, sampling_rate=8000)
    assert one_line(str(error.value))


def test_empty_audio_at_another_rate(features):
    with pytest.raises(ValueError, match="empty") as error:
        features(np.zeros(0, dtype=np.float32), sampling_rate=8000)
    assert one_line(str(error.value))


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.full(RATE, 1e39, dtype=np.float64), "float32"),
        (np.concatenate([np.zeros(RATE - 1), [-2e39]]), "float32"),
        (tone(1.0, RATE).astype(np.complex64), "complex"),
        ([tone(1.0, RATE), tone(1.0, RATE) * 1j], "complex"),
    ],
)
def test_feature_extractor_refuses_values_it_would_change(audio, message):
    with pytest.raises(ValueError, match=message) as error:
        SpidrFeatureExtractor()(audio, sampling_rate=RATE)
    assert one_line(str(error.value))


def test_large_float64_values_that_fit_float32_still_work():
    audio = tone(1.0, RATE).astype(np.float64) * 1e30
    values = SpidrFeatureExtractor()(audio, sampling_rate=RATE)["input_values"][0]
    assert np.isfinite(values).all()


@pytest.mark.parametrize("sampling_rate", ["16000", 16000.5, True])
def test_sampling_rate_must_be_an_integer(sampling_rate):
    with pytest.raises(ValueError, match="integer") as error:
        SpidrFeatureExtractor()(tone(1.0, RATE), sampling_rate=sampling_rate)
    assert one_line(str(error.value))
    assert repr(sampling_rate) in str(error.value)


@pytest.mark.parametrize("sampling_rate", [16000.0, np.int64(16000)])
def test_integral_sampling_rates_of_other_types_are_accepted(sampling_rate):
    values = SpidrFeatureExtractor()(tone(1.0, RATE), sampling_rate=sampling_rate)["input_values"][0]
    assert values.shape == (RATE,)


@pytest.mark.parametrize(
    ("audio", "sampling_rate", "message"),
    [
        (tone(1.0, RATE).astype(np.complex128), RATE, "complex"),
        (torch.from_numpy(tone(1.0, 8000)).to(torch.complex64), 8000, "complex"),
        (tone(1.0, 8000).astype(np.float64) * 1e39, 8000, "float32"),
        (tone(1.0, 8000), "8000", "integer"),
    ],
)
def test_pipeline_refuses_audio_it_would_change(features, audio, sampling_rate, message):
    with pytest.raises(ValueError, match=message) as error:
        features(audio, sampling_rate=sampling_rate)
    assert one_line(str(error.value))


@pytest.mark.parametrize(
    "arguments",
    [
        {"chunk_length_s": "abc"},
        {"chunk_length_s": float("nan")},
        {"stride_length_s": -1.0},
        {"layer": "2"},
        {"layer": True},
    ],
)
def test_pipeline_call_arguments_of_the_wrong_kind(features, arguments):
    with pytest.raises(ValueError, match=next(iter(arguments))) as error:
        features(tone(1.0, RATE), sampling_rate=RATE, **arguments)
    assert one_line(str(error.value))


def test_a_too_short_input_of_a_batch_is_named_by_its_length(features):
    with pytest.raises(ValueError, match="An input has 100 samples") as error:
        features([tone(1.0, RATE), tone(1.0, RATE)[:100]], sampling_rate=RATE, layer=2)
    assert one_line(str(error.value))
    assert "Utterance 0" not in str(error.value)


def run_cli(arguments: list[str], capsys) -> str:
    """The one-line error `spidr-hf` prints for `arguments` (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert one_line(error), error
    return error


@pytest.mark.parametrize(("license_id", "hint"), [("not-a-license", "'other'"), ("cc-by-nc-4", "'cc-by-nc-4.0'")])
def test_push_refuses_an_unknown_license_before_any_work(source_dir, tmp_path, capsys, license_id, hint):
    arguments = ["push", str(source_dir), "--repo-id", "me/model", "--license", license_id]
    error = run_cli([*arguments, "--dry-run", str(tmp_path / "out")], capsys)
    assert "not a Hub license id" in error and hint in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("license_id", ["apache-2.0", "other"])
def test_push_accepts_hub_license_ids(source_dir, tmp_path, license_id):
    arguments = ["push", str(source_dir), "--repo-id", "me/model", "--license", license_id]
    assert main([*arguments, "--dry-run", str(tmp_path / "out")]) == 0
    assert f"license: {license_id}" in (tmp_path / "out" / "README.md").read_text()


@pytest.fixture
def reference_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model, config = build_reference("spidr")
    return write_reference_checkpoint(model, config, "spidr", tmp_path / "original")


def edit_reference_config(checkpoint: Path, edit) -> None:
    path = checkpoint.parent / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["model"].update(encoder_embed_dim="64"), "'encoder_embed_dim' must be an integer, got '64'"),
        (lambda c: c["model"].update(encoder_num_layers=2.5), "'encoder_num_layers' must be an integer"),
        (lambda c: c["model"].update(encoder_layer_norm_first="yes"), "'encoder_layer_norm_first' must be true or"),
        (lambda c: c["model"].update(encoder_dropout="0.1"), "'encoder_dropout' must be a number"),
        (lambda c: c["model"].update(extractor_conv_layer_config=[[32, 10]]), "extractor_conv_layer_config must be"),
        (lambda c: c.update(masking={"mask_prob": "high"}), "'mask_prob' must be a number"),
    ],
)
def test_convert_refuses_config_fields_of_the_wrong_type(reference_checkpoint, tmp_path, capsys, edit, message):
    edit_reference_config(reference_checkpoint, edit)
    error = run_cli(["convert", str(reference_checkpoint), str(tmp_path / "out")], capsys)
    assert message in error and "config.json" in error
    assert not (tmp_path / "out").exists()


def test_convert_names_a_malformed_config_file(reference_checkpoint, tmp_path, capsys):
    config_path = reference_checkpoint.parent / "config.json"
    config_path.write_text('{"model": {')
    error = run_cli(["convert", str(reference_checkpoint), str(tmp_path / "out")], capsys)
    assert f"{config_path} is not valid JSON" in error
    config_path.write_text("[1, 2]")
    assert f"{config_path} must be a JSON object" in run_cli(
        ["convert", str(reference_checkpoint), str(tmp_path / "out")], capsys
    )


def test_convert_without_config_says_which_configuration_it_assumed(reference_checkpoint, tmp_path, capsys):
    (reference_checkpoint.parent / "config.json").unlink()
    error = run_cli(["convert", str(reference_checkpoint), str(tmp_path / "out")], capsys)
    assert "There is no config.json beside" in error and "spidr base configuration was assumed" in error


def test_convert_destination_that_cannot_be_created(reference_checkpoint, tmp_path, capsys):
    (tmp_path / "a-file").write_text("mine")
    error = run_cli(["convert", str(reference_checkpoint), str(tmp_path / "a-file" / "out")], capsys)
    assert f"{tmp_path / 'a-file'} is a file" in error
    assert (tmp_path / "a-file").read_text() == "mine"
    # /proc takes no new folders, even from root (which file permissions would not stop)
    error = run_cli(["convert", str(reference_checkpoint), "/proc/spidr-hf-test-out"], capsys)
    assert "/proc/spidr-hf-test-out" in error


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bert") / "model"
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("bert", "it is a BertConfig, not a SpidR/DinoSR model"),
        ("someone/no-such-model", "it is not a model folder, and offline (HF_HUB_OFFLINE) there is no cached copy"),
        ("not a model id!", "it is neither a model folder nor a Hub model id"),
    ],
)
def test_evaluate_names_what_is_wrong_with_the_model(bert_folder, tmp_path, capsys, model, message):
    model = str(bert_folder) if model == "bert" else model
    arguments = ["evaluate", model, "--dataset", str(tmp_path / "corpus"), "--output", str(tmp_path / "report")]
    error = run_cli(arguments, capsys)
    assert f"Cannot load the model {model}: {message}" in error


@pytest.mark.parametrize("sizes", [{"num_hidden_layers": 1_000_000}, {"kmeans_layer": 2, "kmeans_num_clusters": 10**9}])
@pytest.mark.parametrize("command", ["extract", "kmeans", "evaluate"])
def test_a_config_too_large_for_the_memory_is_refused_before_any_work(source_dir, tmp_path, capsys, sizes, command):
    import json
    import shutil

    folder = tmp_path / "absurd"
    shutil.copytree(source_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **sizes}))
    arguments = {
        "extract": ["extract", str(folder), str(tmp_path), str(tmp_path / "out")],
        "kmeans": ["kmeans", str(folder), "--audio", str(tmp_path)],
        "evaluate": ["evaluate", str(folder), "--dataset", str(tmp_path), "--output", str(tmp_path / "report")],
    }[command]
    error = run_cli(arguments, capsys)  # from the config: no weights are loaded, no model is built
    assert "more than this machine's" in error and "GiB of memory; check its sizes" in error


@pytest.mark.parametrize("command", ["extract", "kmeans", "evaluate", "push", "push a fine-tuned folder"])
def test_truncated_weights_are_a_one_line_error(source_dir, tmp_path, capsys, command):
    import shutil

    from spidr_hf import SpidrForSequenceClassification

    folder = tmp_path / "truncated"
    if command == "push a fine-tuned folder":
        SpidrForSequenceClassification.from_pretrained(source_dir, num_labels=2).save_pretrained(folder)
        capsys.readouterr()
        command = "push"
    else:
        shutil.copytree(source_dir, folder)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # a download or copy cut short
    arguments = {
        "extract": ["extract", str(folder), str(tmp_path), str(tmp_path / "out")],
        "kmeans": ["kmeans", str(folder), "--audio", str(tmp_path)],
        "evaluate": ["evaluate", str(folder), "--dataset", str(tmp_path), "--output", str(tmp_path / "report")],
        "push": ["push", str(folder), "--repo-id", "org/name", "--license", "mit", "--dry-run", str(tmp_path / "r")],
    }[command]
    assert f"Cannot load the model {folder}: Error while deserializing header" in run_cli(arguments, capsys)


@pytest.mark.parametrize(
    ("device", "message"),
    [("foo", "Unknown device 'foo'"), ("cuda", "CUDA is not available"), ("cuda:99", "CUDA")],
)
def test_evaluate_checks_the_device_first(source_dir, tmp_path, capsys, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    arguments = ["evaluate", str(source_dir), "--dataset", str(tmp_path / "corpus"), "--device", device]
    error = run_cli([*arguments, "--output", str(tmp_path / "report")], capsys)
    assert message in error


def test_evaluate_uses_the_default_feature_extractor_for_a_folder_without_one(source_dir, tmp_path, caplog):
    folder = shutil.copytree(source_dir, tmp_path / "model")
    (folder / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.WARNING):
        feature_extractor = load(folder).feature_extractor
    assert isinstance(feature_extractor, SpidrFeatureExtractor)
    assert feature_extractor.to_dict() == SpidrFeatureExtractor().to_dict()
    assert "has no preprocessor_config.json" in caplog.text


@pytest.fixture
def run_config(tmp_path) -> Path:
    config = {
        "objective": "spidr",
        "model_config": {**TINY_CONFIG, "conv_dim": list(TINY_CONFIG["conv_dim"])},
        "dataset": str(tmp_path / "corpus"),
        "output_dir": str(tmp_path / "run"),
        "max_steps": 3,
        "use_cpu": True,
        "report_to": "none",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--max_steps=abc", "max_steps must be an integer, got 'abc'"),
        ("--max_steps=2.5", "max_steps must be an integer, got 2.5"),
        ("--learning_rate=fast", "learning_rate must be a number, got 'fast'"),
        ("--bf16=1", "bf16 must be true or false, got 1"),
        ("--min_samples=null", "min_samples must be an integer, got None"),
        ("--per_device_train_batch_size=0", "per_device_train_batch_size must be at least 1, got 0"),
        ("--gradient_accumulation_steps=-1", "gradient_accumulation_steps must be at least 1, got -1"),
    ],
)
def test_training_arguments_of_the_wrong_type(run_config, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_pretraining_config([str(run_config), override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--model_config.hidden_size=abc", "model_config.hidden_size must be an integer, got 'abc'"),
        ("--model_config.num_hidden_layers=2.5", "model_config.num_hidden_layers must be an integer, got 2.5"),
        ("--model_config.conv_dim=3", "model_config.conv_dim must be a list, got 3"),
        ("--model_config.qkv_bias=yes", "model_config.qkv_bias must be true or false, got 'yes'"),
    ],
)
def test_model_config_values_of_the_wrong_type(run_config, override, message):
    model_args, _, _ = parse_pretraining_config([str(run_config), override])
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(model_args)


def test_the_shipped_training_configs_pass_the_type_checks():
    for path in sorted((Path(__file__).parents[1] / "training" / "configs").glob("*.yaml")):
        values = read_config_file(path)
        check_value_types(values, (ModelArguments, DataArguments, SpidrTrainingArguments))
        check_value_types(values.get("model_config", {}), (SpidrConfig,))


def test_resuming_with_another_architecture_says_so(corpus, tmp_path):
    train = load_script(Path(__file__).parents[1] / "training" / "train.py", "spidr_train_user_errors")
    config = {
        "objective": "spidr",
        "model_config": {**TINY_CONFIG, "conv_dim": list(TINY_CONFIG["conv_dim"])},
        "dataset": str(corpus),
        "max_batch_samples": 64_000,
        "min_samples": 4_000,
        "max_samples": 16_000,
        "output_dir": str(tmp_path / "run"),
        "max_steps": 2,
        "save_steps": 2,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    train.main([str(path)])
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    with pytest.raises(ValueError, match="checkpoint-2 was made with another model configuration") as error:
        train.main([str(path), "--max_steps=4", "--model_config.num_hidden_layers=3"])
    assert "num_hidden_layers=4 there, 3 here" in str(error.value) and one_line(str(error.value))


def test_a_checkpoint_of_the_same_architecture_fits(tmp_path):
    model = SpidrForPreTraining(SpidrConfig(**TINY_CONFIG))
    model.save_pretrained(tmp_path / "checkpoint")
    check_checkpoint_fits(tmp_path / "checkpoint", SpidrForPreTraining(SpidrConfig(**TINY_CONFIG, mask_time_prob=0.5)))
    with pytest.raises(ValueError, match="codebook_size=16 there, 32 here"):
        other = SpidrForPreTraining(SpidrConfig(**{**TINY_CONFIG, "codebook_size": 32}))
        check_checkpoint_fits(tmp_path / "checkpoint", other)


def test_training_warnings_name_the_skipped_files(tmp_path, caplog):
    folder = tmp_path / "audio"
    folder.mkdir()
    for index in range(4):
        write_audio(folder / f"good{index}.wav", tone(1.0 + index / 4, RATE))
    (folder / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(5000))  # no readable header
    write_audio(folder / "short.wav", tone(0.05, RATE))
    write_audio(folder / "broken.flac", tone(1.0, RATE))
    data = bytearray((folder / "broken.flac").read_bytes())
    for i in range(200, len(data)):  # a valid header, then corrupt frames: fails only when decoded
        data[i] = (data[i] * 7 + 13) % 256
    (folder / "broken.flac").write_bytes(bytes(data))
    arguments = DataArguments(dataset=str(folder), max_batch_samples=64_000, min_samples=4_000, max_samples=16_000)
    training_arguments = SpidrTrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none")
    data = PretrainingData.load(arguments, training_arguments)
    with caplog.at_level(logging.WARNING, logger="spidr_hf.pretraining.data"):
        loader = data.train_dataloader(SpidrConfig(**TINY_CONFIG))
        skipped = sum(batch["num_skipped"] for batch in loader)
    assert "Left out of training: 1 unreadable and 1 too short" in caplog.text
    assert (
        f"unreadable: {folder / 'garbage.wav'}" in caplog.text and f"too short: {folder / 'short.wav'}" in caplog.text
    )
    assert skipped[0] == 1  # broken.flac, found when decoding
    assert f"Skipping unreadable audio {folder / 'broken.flac'}: " in caplog.text


@pytest.mark.parametrize(
    ("dataset", "message"),
    [("missing-folder", "Cannot open the dataset"), ("someone/no-such-dataset", "Cannot open the dataset")],
)
def test_a_dataset_that_cannot_be_opened(tmp_path, dataset, message):
    source = str(tmp_path / dataset) if dataset == "missing-folder" else dataset
    with pytest.raises(ValueError, match=message) as error:
        load_audio_dataset(source)
    assert source in str(error.value) and one_line(str(error.value))


@pytest.mark.parametrize("init_from", ["missing-folder", "someone/no-such-model", "bert"])
def test_init_from_that_cannot_be_loaded(run_config, bert_folder, tmp_path, init_from):
    init_from = {"missing-folder": str(tmp_path / "missing"), "bert": str(bert_folder)}.get(init_from, init_from)
    model_args, _, _ = parse_pretraining_config([str(run_config), f"--init_from={init_from}"])
    with pytest.raises(ValueError, match=re.escape(init_from)) as error:
        build_model(model_args)
    assert one_line(str(error.value))
    if init_from == str(bert_folder):
        assert "BertConfig, not a SpidR/DinoSR model" in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"streaming_buffer": 0}, "streaming_buffer"),
        ({"num_buckets": 0}, "num_buckets"),
        ({"min_samples": 0}, "min_samples"),
        ({"length_num_proc": 0}, "length_num_proc"),
        ({"max_samples": 1_000, "min_samples": 2_000}, "max_samples"),
        ({"max_batch_samples": 1_000}, "max_batch_samples"),
    ],
)
def test_data_arguments_out_of_range(change, message):
    with pytest.raises(ValueError, match=message) as error:
        DataArguments(dataset="unused", **change)
    assert one_line(str(error.value))


@pytest.mark.parametrize(("option", "value"), [("--train-dataset", "not a dataset id!"), ("--base-model", "a//b")])
def test_push_refuses_invalid_card_hub_ids_before_any_work(source_dir, tmp_path, capsys, option, value):
    arguments = ["push", str(source_dir), "--repo-id", "me/model", "--license", "mit", option, value]
    error = run_cli([*arguments, "--dry-run", str(tmp_path / "out")], capsys)
    assert option in error and value in error
    assert not (tmp_path / "out").exists()


def cli_error(capsys, *argv: str) -> str:
    """The one-line error of `spidr-hf ARGV` (after any progress bars)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(map(str, argv)))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error.split(": error: ", 1)[1].splitlines()[0]


def test_a_file_with_nan_samples_is_named_by_extract_and_kmeans(source_dir, tmp_path, capsys):
    from scipy.io import wavfile

    audio = tmp_path / "audio"
    audio.mkdir()
    for index in range(3):
        samples = tone(1.0 + index / 10, RATE)
        if index == 1:
            samples[500] = np.nan  # a float wav holds NaN as it is
        wavfile.write(audio / f"f{index}.wav", RATE, samples)
    bad = audio / "f1.wav"
    message = f"{bad} holds NaN or infinite samples"
    assert message in cli_error(capsys, "extract", source_dir, audio, tmp_path / "out", "--layer", "3")
    argv = ["kmeans", source_dir, "--audio", audio, "--output", tmp_path / "kmeans", "--num-clusters", "4"]
    assert message in cli_error(capsys, *argv)
    assert not (tmp_path / "kmeans").exists()


# Found by probing the commands again after issue 36's fixes: each was a traceback or a misleading line


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("the user's")
    return path


@pytest.mark.parametrize("command", ["extract", "extract --units-file", "kmeans", "slm-benchmark", "slm-score"])
def test_an_output_under_a_file_is_refused_before_any_work(source_dir, tmp_path, capsys, a_file, command):
    audio = tmp_path / "audio"
    write_audio(audio / "a.wav", tone(1.0, RATE))
    model, inside = str(source_dir), str(a_file / "out")
    arguments = {
        "extract": ["extract", model, str(audio), inside],
        "extract --units-file": [
            "extract", model, str(audio), str(tmp_path / "out"), "--units", "codebook", "--layer", "4",
            "--units-file", str(a_file / "units.txt"),
        ],
        "kmeans": ["kmeans", model, "--audio", str(audio), "--layer", "2", "--num-clusters", "2", "--output", inside],
        "slm-benchmark": ["slm-benchmark", inside, "--words", "1", "--sentences", "1"],
        "slm-score": [
            "slm-score", str(tmp_path / "ulm"), "--units-model", model, "--ssc", str(audio), "--output", inside,
        ],
    }[command]  # fmt: skip
    error = run_cli(arguments, capsys)
    # A units file's folder is checked (the file itself may be there already, for a run to resume)
    named = f"{a_file}: it is" if command == "extract --units-file" else f"{a_file / 'out'}: {a_file} is"
    assert f"Cannot write into {named} a file, not a folder (checked before any work)" in error
    assert a_file.read_text() == "the user's" and not (tmp_path / "out").exists()


def test_a_staged_folder_under_a_file_is_one_line(a_file):
    from spidr_hf.io.atomic_files import new_folder

    with (
        pytest.raises(ValueError, match=re.escape(f"{a_file} is a file, not a folder")) as error,
        new_folder(a_file / "release"),
    ):
        pass
    assert one_line(str(error.value))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfeid,filename", "is not UTF-8 text"),
        (b"id,filename,voice,frequency,word,correct\n", "has a header but no rows"),
        (b"id,filename,voice,frequency,word,correct\n1,a,v,abc,w,1\n", "gold.csv:2: frequency 'abc' is not a number"),
        (b"id,filename\n1,a\n", "lacks the column(s) correct, frequency, voice, word"),
    ],
)
def test_a_gold_csv_that_cannot_be_scored_is_named(tmp_path, content, message):
    from spidr_hf.slm.score import read_gold

    path = tmp_path / "gold.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        read_gold(path, "lexical")
    assert str(path) in str(error.value) and one_line(str(error.value))


@pytest.mark.parametrize("dataset", ["no rows", "columns naming missing files"])
def test_a_story_cloze_dataset_without_a_readable_pair_is_one_line(tmp_path, dataset):
    from datasets import Audio, Dataset, Features

    from spidr_hf.slm.story_cloze import dataset_story_cloze

    folder = tmp_path / "stories"
    if dataset == "no rows":
        features = Features({"positive": Audio(sampling_rate=RATE), "negative": Audio(sampling_rate=RATE)})
        Dataset.from_dict({"positive": [], "negative": []}, features=features).save_to_disk(str(folder))
        message = f"{folder} is a damaged or empty save_to_disk dataset folder"
    else:
        missing = {"positive": [str(tmp_path / "gone-true.wav")], "negative": [str(tmp_path / "gone-false.wav")]}
        Dataset.from_dict(missing).save_to_disk(str(folder))
        message = f"{folder} has no story-cloze pair whose two audios can be read: row 0 ("
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        dataset_story_cloze(str(folder), tmp_path / "cache", true_column="positive", false_column="negative")
    assert one_line(str(error.value))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "dataset: [unclosed\n", "cannot be parsed at line 2, column 1"),
        ("bad.json", '{"max_steps": 3,}', "cannot be parsed at line 1, column 17"),
        ("bad.yaml", "\tmax_steps: 3\n", "cannot be parsed at line 1, column 1"),
    ],
)
def test_a_config_file_that_cannot_be_parsed_is_named_with_its_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"Config file {path} {message}")) as error:
        read_config_file(path)
    assert one_line(str(error.value))


@pytest.mark.parametrize("max_steps", [0, -2])
def test_max_steps_below_one_other_than_minus_one_is_refused(run_config, max_steps):
    with pytest.raises(ValueError, match=re.escape("max_steps must be at least 1 (or -1: num_train_epochs)")):
        parse_pretraining_config([str(run_config), f"--max_steps={max_steps}"])


@pytest.mark.parametrize("reader", ["corpus split", "pretraining dataset"])
def test_a_damaged_saved_dataset_is_one_line(tmp_path, reader):
    from spidr_hf.data.aligned_speech import open_corpus_split

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "dataset_dict.json").write_text("")  # a copy cut short
    with pytest.raises(ValueError, match=re.escape(f"{folder} is a damaged or empty save_to_disk dataset")) as error:
        open_corpus_split(folder, "dev") if reader == "corpus split" else load_audio_dataset(str(folder))
    assert one_line(str(error.value))
