"""The command line: one vocabulary, deprecated spellings, fast help, one-line user errors, tracebacks for bugs."""

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spidr_hf_cli
from spidr_hf.errors import SpidrError, is_user_error
from spidr_hf.evaluation import evaluate_model
from spidr_hf.model.configuration_spidr import OBJECTIVES
from spidr_hf.model.loading import DTYPES
from spidr_hf.model.modeling_spidr import UNIT_KINDS
from spidr_hf.units import extract as extract_module
from spidr_hf.units.stored_kmeans import fit_model_kmeans
from spidr_hf_cli import commands, main


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


def test_the_command_line_reads_the_librarys_defaults_and_the_model_files_agree_with_them():
    import spidr_hf.defaults
    from spidr_hf_cli import arguments

    # The parser's defaults come from the library's own file, read without importing spidr_hf (see the test above)
    assert Path(arguments.DEFAULTS.__file__) == Path(spidr_hf.defaults.__file__)
    assert parse("kmeans", "m", "--audio", "a").kmeans_frames == spidr_hf.defaults.KMEANS_FRAMES
    assert parse("evaluate", "m").kmeans_frames == spidr_hf.defaults.EVALUATE_KMEANS_FRAMES
    assert parse("extract", "m", "i", "o").chunk_seconds == spidr_hf.defaults.CHUNK_SECONDS
    # The remote-code files cannot import the package: the choices they own are copied there, and must stay equal
    assert spidr_hf.defaults.UNIT_KINDS == UNIT_KINDS
    assert spidr_hf.defaults.OBJECTIVES == OBJECTIVES
    assert tuple(DTYPES) == spidr_hf.defaults.DTYPE_NAMES
    # The library's functions take the same defaults when called from Python
    assert inspect.signature(extract_module.extract).parameters["batch_seconds"].default is None  # the device decides
    evaluate_defaults = inspect.signature(evaluate_model).parameters
    assert evaluate_defaults["kmeans_frames"].default == spidr_hf.defaults.EVALUATE_KMEANS_FRAMES
    kmeans_defaults = inspect.signature(fit_model_kmeans).parameters
    assert kmeans_defaults["kmeans_frames"].default == parse("kmeans", "m", "--audio", "a").kmeans_frames


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
    ("argv", "message"),
    [
        (["kmeans", "m", "--audio", "a", "--batch-size", "0"], "must be a positive"),
        (["extract", "m", "i", "o", "--batch-seconds", "-1"], "must be a positive"),
        (["kmeans", "m", "--audio", "a", "--seed", "-1"], "argument --seed: must be 0 or more, got -1"),
        (["slm-benchmark", "out", "--num-workers", "0"], "argument --num-workers: must be a positive integer, got 0"),
        (["slm-benchmark", "out", "--num-workers", "-1"], "argument --num-workers: must be a positive integer"),
        (["corpus", "out", "--num-workers", "-2"], "argument --num-workers: must be a positive integer"),
    ],
)
def test_bad_numbers_are_refused_while_parsing(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def raise_numpy_error(args) -> int:
    np.zeros(-1)  # numpy's ValueError: a bug, not the user's input
    return 0


def raise_user_error(args) -> int:
    raise SpidrError("the folder holds no audio")


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    monkeypatch.setattr(commands, "extract", raise_user_error)
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "m", "i", "o"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "spidr-hf extract: error: the folder holds no audio\n"
    monkeypatch.setattr(commands, "extract", raise_numpy_error)
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
