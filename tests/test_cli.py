"""The command line: one vocabulary, deprecated spellings, fast help, one-line user errors, tracebacks for bugs."""

import inspect
import subprocess
import sys

import numpy as np
import pytest

import spidr_hf_cli
from spidr_hf.data.corpus import build_corpus
from spidr_hf.errors import SpidrError, is_user_error
from spidr_hf.evaluation import evaluate_model
from spidr_hf.model.configuration_spidr import OBJECTIVES
from spidr_hf.model.loading import DTYPES
from spidr_hf.model.modeling_spidr import UNIT_KINDS
from spidr_hf.units import encoder as encoder_module
from spidr_hf.units import extract as extract_module
from spidr_hf.units import kmeans as kmeans_module
from spidr_hf.units.clustering import DEFAULT_KMEANS_FRAMES
from spidr_hf.units.formats import UNITS_FORMATS
from spidr_hf_cli import main


def test_parsing_and_help_import_neither_torch_nor_transformers():
    script = (
        "import sys, spidr_hf_cli\n"
        "for command in ([], *([name] for name in spidr_hf_cli.SUBCOMMANDS)):\n"
        "    try:\n"
        "        spidr_hf_cli.main([*command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(name for name in ('torch', 'transformers', 'spidr_hf') if name in sys.modules))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert completed.stdout.strip().splitlines()[-1] == "[]"
    assert "usage: spidr-hf kmeans" in completed.stdout


def test_python_dash_m_runs_the_command_line():
    completed = subprocess.run([sys.executable, "-m", "spidr_hf", "--help"], capture_output=True, text=True)
    assert completed.returncode == 0
    assert "usage: spidr-hf" in completed.stdout and "evaluate" in completed.stdout


def test_the_command_lines_vocabulary_is_the_librarys():
    assert spidr_hf_cli.UNIT_KINDS == UNIT_KINDS
    assert tuple(DTYPES) == spidr_hf_cli.DTYPES
    assert spidr_hf_cli.OBJECTIVES == OBJECTIVES
    extract_defaults = inspect.signature(extract_module.extract).parameters
    assert extract_defaults["batch_seconds"].default is None  # the device decides
    assert spidr_hf_cli.ACCELERATOR_BATCH_SECONDS == encoder_module.ACCELERATOR_BATCH_SECONDS
    assert spidr_hf_cli.CPU_BATCH_SECONDS == encoder_module.CPU_BATCH_SECONDS
    assert spidr_hf_cli.DEFAULT_CHUNK_SECONDS == encoder_module.DEFAULT_CHUNK_SECONDS
    assert spidr_hf_cli.UNITS_FORMATS == UNITS_FORMATS
    evaluate_defaults = inspect.signature(evaluate_model).parameters
    assert evaluate_defaults["batch_size"].default == spidr_hf_cli.DEFAULT_BATCH_SIZE
    assert evaluate_defaults["num_clusters"].default == spidr_hf_cli.DEFAULT_NUM_CLUSTERS
    assert evaluate_defaults["kmeans_frames"].default == spidr_hf_cli.DEFAULT_EVALUATE_KMEANS_FRAMES
    assert spidr_hf_cli.DEFAULT_KMEANS_FRAMES == DEFAULT_KMEANS_FRAMES
    assert spidr_hf_cli.DEFAULT_KMEANS_MEMORY_FRAMES == kmeans_module.DEFAULT_MEMORY_FRAMES
    assert spidr_hf_cli.DEFAULT_BATCH_SIZE == kmeans_module.DEFAULT_BATCH_SIZE
    corpus_defaults = inspect.signature(build_corpus).parameters
    assert corpus_defaults["hours"].default == spidr_hf_cli.DEFAULT_CORPUS_HOURS
    assert corpus_defaults["num_speakers"].default == spidr_hf_cli.DEFAULT_SPEAKERS
    assert corpus_defaults["dev_speakers"].default == spidr_hf_cli.DEFAULT_DEV_SPEAKERS


def parse(*argv: str):
    return spidr_hf_cli.build_parser().parse_args(list(argv))


def test_old_spellings_work_for_one_release_with_a_warning():
    with pytest.warns(FutureWarning, match="--clusters is deprecated.*use --num-clusters"):
        old = parse("kmeans", "m", "--audio", "a", "--clusters", "64")
    with pytest.warns(FutureWarning, match="--frames is deprecated.*use --kmeans-frames"):
        old_frames = parse("kmeans", "m", "--audio", "a", "--frames", "5000")
    assert old.num_clusters == parse("kmeans", "m", "--audio", "a", "--num-clusters", "64").num_clusters == 64
    assert old_frames.kmeans_frames == 5000
    with pytest.warns(FutureWarning, match="--dataset is deprecated.*use --train-dataset"):
        push = parse("push", "m", "--repo-id", "o/n", "--dataset", "a/b", "--train-dataset", "c/d", "--dataset", "e/f")
    assert push.train_dataset == ["a/b", "c/d", "e/f"]


def test_same_options_have_the_same_names_and_defaults():
    kmeans, evaluate = parse("kmeans", "m", "--audio", "a"), parse("evaluate", "m")
    for name in ("num_clusters", "batch_size", "dtype", "device", "seed"):
        assert hasattr(kmeans, name) and hasattr(evaluate, name), name
    assert kmeans.num_clusters == evaluate.num_clusters and kmeans.batch_size == evaluate.batch_size
    assert parse("extract", "m", "i", "o").dtype == kmeans.dtype == evaluate.dtype == "float32"


@pytest.mark.parametrize(
    "argv", [["kmeans", "m", "--audio", "a", "--batch-size", "0"], ["extract", "m", "i", "o", "--batch-seconds", "-1"]]
)
def test_bad_numbers_are_refused_while_parsing(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    assert "must be a positive" in capsys.readouterr().err


def raise_numpy_error(args) -> int:
    np.zeros(-1)  # numpy's ValueError: a bug, not the user's input
    return 0


def raise_user_error(args) -> int:
    raise SpidrError("the folder holds no audio")


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    monkeypatch.setattr(extract_module, "run", raise_user_error)
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "m", "i", "o"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "spidr-hf extract: error: the folder holds no audio\n"
    monkeypatch.setattr(extract_module, "run", raise_numpy_error)
    with pytest.raises(ValueError, match="negative dimensions"):
        main(["extract", "m", "i", "o"])


def test_which_errors_are_the_users():
    with pytest.raises(ValueError) as numpy_error:
        np.zeros(-1)
    assert not is_user_error(numpy_error.value)
    from spidr_hf import SpidrConfig

    with pytest.raises(ValueError) as config_error:
        SpidrConfig(objective="hubert")  # raised by the model files, which ship as remote code
    assert is_user_error(config_error.value)
    assert is_user_error(SpidrError("x")) and not is_user_error(RuntimeError("x"))


def test_push_names_an_unknown_official_checkpoint_before_any_work(tmp_path, capsys):
    """`--official` takes a name of model_cards/official.toml; a wrong one is refused before the model is looked at."""
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(tmp_path / "no-model"), "--repo-id", "o/n", "--official", "spidr-large", "--dry-run", "x"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "Unknown official checkpoint 'spidr-large'; known: [" in message and "spidr-base" in message
    assert message.count("\n") == 1 and not (tmp_path / "x").exists()
