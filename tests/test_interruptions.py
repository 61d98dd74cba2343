"""
Every write path of extract, kmeans, convert, push and corpus, interrupted just before each of its renames (the step
that publishes a file or folder): the run is cut there, the same command is run again, and the outputs must be those
of an uninterrupted run, with no hidden leftovers beside them.
"""

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import Cut, renames_cut_after, write_audio
from reference import build_reference, write_reference_checkpoint
from test_extract import speech_like

from spidr_hf_cli import main


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too), by relative path; folders that hold runs' outputs only."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def cut_at_every_rename(
    monkeypatch, run: Callable[[], None], outputs: Callable[[], dict[str, bytes]], fresh: Callable[[], None]
) -> int:
    """
    Run once uninterrupted for the expected outputs; then for k = 0, 1, ...: start afresh, cut the run at its k-th
    rename (`os.replace` of a file, `shutil.move` of a staging folder), run it again whole, and compare. Returns the
    number of renames of a run.
    """
    fresh()
    run()
    expected = outputs()
    cut_at = 0
    while True:
        fresh()
        with renames_cut_after(monkeypatch, cut_at) as done:
            try:
                run()
                return cut_at
            except Cut:
                pass
        run()  # the same command again
        assert outputs() == expected, f"cut before rename {cut_at + 1} (after {done})"
        cut_at += 1


@pytest.fixture
def audio_dir(tmp_path) -> Path:
    for index, seconds in enumerate([1.2, 0.8, 2.1]):
        write_audio(tmp_path / "audio" / f"f{index}.wav", speech_like(seconds, index, 16000))
    return tmp_path / "audio"


@pytest.mark.parametrize("units_format", ["txt", "parquet"])
def test_extract_cut_at_any_rename_then_rerun(source_dir, audio_dir, tmp_path, monkeypatch, units_format):
    out = tmp_path / "out"
    command = ["extract", str(source_dir), str(audio_dir), str(out), "--units", "codebook", "--features"]
    command += ["--units-format", units_format, "--batch-seconds", "2", "--num-workers", "0"]

    def outputs() -> dict[str, bytes]:
        return {name: data for name, data in contents(out).items() if name != "README.md"} | {
            "README": (out / "README.md").read_bytes() if units_format == "parquet" else b""
        }

    renames = cut_at_every_rename(
        monkeypatch, lambda: main(command), outputs, lambda: shutil.rmtree(out, ignore_errors=True)
    )
    assert renames >= 5  # a .pt per file, the record, the units


@pytest.mark.slow
def test_kmeans_to_a_new_folder_and_push_cut_at_any_rename_then_rerun(source_dir, corpus, tmp_path, monkeypatch):
    kmeans_out, release = tmp_path / "kmeans", tmp_path / "release"
    kmeans = ["kmeans", str(source_dir), "--dataset", str(corpus), "--layer", "2", "--num-clusters", "4"]
    kmeans += ["--kmeans-frames", "500", "--device", "cpu", "--output", str(kmeans_out)]
    cut_at_every_rename(
        monkeypatch,
        lambda: main(kmeans),
        lambda: contents(tmp_path / "kmeans"),
        lambda: shutil.rmtree(kmeans_out, ignore_errors=True),
    )
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []
    push = ["push", str(kmeans_out), "--repo-id", "org/name", "--license", "cc-by-4.0", "--dry-run", str(release)]
    cut_at_every_rename(
        monkeypatch, lambda: main(push), lambda: contents(release), lambda: shutil.rmtree(release, ignore_errors=True)
    )
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []


def test_convert_cut_at_any_rename_then_rerun(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, config = build_reference("spidr")
    checkpoint = write_reference_checkpoint(model, config, "spidr", tmp_path / "original")
    out = tmp_path / "converted"
    renames = cut_at_every_rename(
        monkeypatch,
        lambda: main(["convert", str(checkpoint), str(out)]),
        lambda: contents(out),
        lambda: shutil.rmtree(out, ignore_errors=True),
    )
    assert renames >= 1
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


@pytest.mark.slow
def test_corpus_cut_at_any_rename_then_rerun(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    command = ["corpus", str(out), "--hours", "0.003", "--speakers", "2", "--dev-speakers", "1", "--num-workers", "1"]
    renames = cut_at_every_rename(
        monkeypatch,
        lambda: main(command),
        # The saved dataset's files carry a fingerprint of their cache, the same for the same rows
        lambda: {name: data for name, data in contents(out).items() if not name.endswith("state.json")},
        lambda: shutil.rmtree(out, ignore_errors=True),
    )
    assert renames >= 4  # a wav and an alignment per utterance, the item file
