"""
`spidr-hf extract` split over shards and processes: the outputs of one process whatever the split, resumable after a
SIGKILL, refused when shards disagree, and units as a parquet `datasets` dataset.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_audio
from test_extract import run_cli, speech_like

from spidr_hf.io.file_locks import exclusive_lock
from spidr_hf.io.sharding import Shard, balanced_split, parse_shard, this_process
from spidr_hf.units.extract import SHARD_LOCKS, extract
from spidr_hf_cli import main

SECONDS = [2.1, 0.6, 1.4, 3.0, 0.9, 1.7, 0.8, 2.4, 1.1, 0.7]
LAYER = ["--layer", "3"]


@pytest.fixture(scope="module")
def many_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for index, seconds in enumerate(SECONDS):
        write_audio(folder / f"spk{index % 3}" / f"utt{index:02d}.wav", speech_like(seconds, index, 16000), 16000)
    return folder


def ids() -> list[str]:
    return [f"spk{index % 3}/utt{index:02d}" for index in range(len(SECONDS))]


def features_of(output: Path) -> dict[str, bytes]:
    return {path.relative_to(output).with_suffix("").as_posix(): path.read_bytes() for path in output.rglob("*.pt")}


def command(*argv) -> list[str]:
    return [sys.executable, "-m", "spidr_hf", "extract", *map(str, argv)]


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    completed = subprocess.run(command(*argv), capture_output=True, text=True, **kwargs)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


@pytest.fixture(scope="module")
def one_process(source_dir, many_files, tmp_path_factory) -> Path:
    """The reference: one process, features and codebook units, 2 s batches (several files a batch)."""
    output = tmp_path_factory.mktemp("one") / "out"
    options = dict(layer=3, units="codebook", features=True, batch_seconds=4.0)
    extract(source_dir, many_files, output, **options)
    extract(source_dir, many_files, output.with_name("parquet"), **options, units_format="parquet", deduplicate=True)
    return output


def test_independent_shards_give_the_outputs_of_one_process(source_dir, many_files, one_process, tmp_path, capsys):
    output = tmp_path / "out"
    argv = [source_dir, many_files, output, *LAYER, "--features", "--units", "codebook", "--batch-seconds", "4"]
    assert main(["extract", *map(str, argv), "--shard", "1/2"]) == 0
    assert "units remain for the other shards" in capsys.readouterr().out
    first = features_of(output)
    assert 0 < len(first) < len(SECONDS)  # a part of the files
    assert not (output / "units.txt").exists()  # the units file appears only whole
    assert main(["extract", *map(str, argv), "--shard", "0/2"]) == 0
    assert features_of(output) == features_of(one_process)  # every .pt bitwise
    assert (output / "units.txt").read_bytes() == (one_process / "units.txt").read_bytes()  # same lines, input order
    assert [line.split("\t")[0] for line in (output / "units.txt").read_text().splitlines()] == sorted(ids())
    assert sorted(path.name for path in output.iterdir() if not path.is_dir()) == ["extract.json", "units.txt"]
    assert not (output / SHARD_LOCKS).exists() and not (output / ".units.txt.parts").exists()


@pytest.mark.slow
def test_two_torchrun_processes_give_the_outputs_of_one_process(source_dir, many_files, one_process, tmp_path):
    from datasets import load_dataset

    output = tmp_path / "out"
    # Standalone: its rendezvous store binds a port of the system's choosing (a port found free beforehand may be taken
    # by the time torchrun binds it)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv = [source_dir, many_files, output, *LAYER, "--features", "--units", "codebook", "--batch-seconds", "4"]
    argv += ["--units-format", "parquet", "--deduplicate", "--device", "cpu"]
    completed = subprocess.run([*launcher, *command(*argv)[1:]], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert features_of(output) == features_of(one_process)
    parquet_files = sorted(path.name for path in (output / "units").iterdir())
    assert {name.split("-")[0] for name in parquet_files} == {"00000", "00001"}  # each process wrote its own
    rows = load_dataset("parquet", data_files=f"{output}/**/*.parquet", split="train")
    reference = load_dataset("parquet", data_files=f"{one_process.with_name('parquet')}/**/*.parquet", split="train")
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows) == len(SECONDS)  # each file once
    assert by_id == {row["id"]: row for row in reference}


def test_parquet_units_are_a_datasets_dataset_with_a_card(source_dir, many_files, one_process, tmp_path):
    from datasets import Value, load_dataset

    folder = one_process.with_name("parquet")
    rows = load_dataset(str(folder), split="train")  # the card's YAML names the parquet files
    assert rows.features["units"].feature == Value("int16") and rows.features["num_frames"] == Value("int32")
    text_units = {
        line.split("\t")[0]: [int(unit) for unit in line.split("\t")[1].split()]
        for line in (one_process / "units.txt").read_text().splitlines()
    }
    for row in rows:
        frames = np.repeat(row["units"], row["durations"])  # deduplicated runs expand to the frame units
        assert len(frames) == row["num_frames"] == sum(row["durations"])
        assert frames.tolist() == text_units[row["id"]]
        assert all(a != b for a, b in zip(row["units"], row["units"][1:], strict=False))
    card = (folder / "README.md").read_text()
    settings = json.loads((folder / "extract.json").read_text())["settings"]
    assert settings["weights_sha256"] in card and "unit_kind: codebook" in card and "frame_rate: 50" in card


# `spidr-hf extract` that kills itself (SIGKILL, as a crash or the OOM killer would) when it is about to rename its
# second feature file into place: one `.pt` is written, the next one's side file is not renamed yet, the units of the
# first batch may be half written. At a state, not at a moment: a kill timed from outside may come after the last file
KILLED_AT_SECOND_FEATURE = textwrap.dedent(
    """
    import os, signal, sys
    from spidr_hf_cli import main

    rename = os.replace
    renamed_features = []

    def rename_or_die(source, target):
        if str(target).endswith(".pt"):
            if renamed_features:
                os.kill(os.getpid(), signal.SIGKILL)
            renamed_features.append(target)
        return rename(source, target)

    os.replace = rename_or_die
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_a_killed_shard_resumes_to_the_uninterrupted_outputs(source_dir, many_files, one_process, tmp_path):
    output = tmp_path / "out"
    argv = [source_dir, many_files, output, *LAYER, "--features", "--units", "codebook", "--batch-seconds", "4"]
    argv += ["--num-workers", "0", "--shard", "0/1"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_SECOND_FEATURE, "extract", *map(str, argv)], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(features_of(output)) == 1 and len(list(output.rglob(".*.pt.partial"))) == 1
    assert not (output / "units.txt").exists()
    run(*argv)
    assert features_of(output) == features_of(one_process)
    assert (output / "units.txt").read_bytes() == (one_process / "units.txt").read_bytes()
    assert not list(output.rglob("*.partial"))  # the side file left by the kill was written again and renamed


def test_shards_with_other_settings_are_refused(source_dir, many_files, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["extract", str(source_dir), str(many_files), str(output), *LAYER, "--shard", "0/2"]) == 0
    before = features_of(output)
    message = run_cli(capsys, source_dir, many_files, output, "--layer", "2", "--shard", "1/2")
    assert "holds outputs of other settings (layer: 3 -> 2)" in message
    message = run_cli(capsys, source_dir, many_files, output, "--shard", "1/2", "--batch-seconds", "1")
    assert "batch_seconds: 20.0 -> 1.0" in message
    assert features_of(output) == before


def test_a_shard_that_is_running_is_not_run_twice(source_dir, many_files, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    argv = [source_dir, many_files, output]
    with exclusive_lock(output / SHARD_LOCKS / Shard(1, 2).name):  # as a running `--shard 1/2` holds it
        assert "Another spidr-hf extract is running shard 1/2 into" in run_cli(capsys, *argv, "--shard", "1/2")
        # another split: its files would overlap
        assert "another split (shard 1/2) is running" in run_cli(capsys, *argv, "--shard", "0/3")
        # the other shard of the same split runs alongside
        assert main(["extract", *map(str, argv), *LAYER, "--shard", "0/2"]) == 0
    assert features_of(output)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2/2", "--shard must be K/N with 0 <= K < N"),
        ("-1/2", "--shard must be K/N"),
        ("1", "--shard must be K/N"),
        ("a/b", "--shard must be K/N"),
        ("slurm", "--shard slurm needs SLURM_ARRAY_TASK_ID"),
    ],
)
def test_a_bad_shard_is_a_one_line_error(source_dir, many_files, tmp_path, capsys, monkeypatch, value, message):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert message in run_cli(capsys, source_dir, many_files, tmp_path / "out", f"--shard={value}")
    assert not (tmp_path / "out").exists()


def test_slurm_arrays_and_launchers_pick_the_part():
    assert parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(3, 4)
    # --array=1-4 numbers its tasks from 1
    slurm = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert parse_shard("slurm", slurm) == Shard(0, 4)
    torchrun = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    assert this_process(Shard(0, 1), torchrun).shard == Shard(1, 2)
    assert this_process(Shard(2, 3), torchrun).shard == Shard(5, 6)  # rank 1 of 2 within array task 2 of 3
    assert this_process(Shard(0, 1), {}).shard == Shard(0, 1)


def test_the_split_is_balanced_and_covers_every_item():
    costs = list(np.random.default_rng(0).uniform(1, 30, size=500))
    parts = balanced_split(costs, 8)
    totals = [sum(cost for cost, part in zip(costs, parts, strict=True) if part == index) for index in range(8)]
    assert sorted(set(parts)) == list(range(8))
    assert max(totals) - min(totals) <= max(costs)  # no part waits on another for more than one item
    assert balanced_split(costs, 8) == parts
    assert balanced_split([1.0, 1.0, 1.0], 5).count(0) == 1


def test_names_every_format_can_hold_round_trip(source_dir, tmp_path, capsys):
    folder = tmp_path / "audio"
    names = ["tab\there", "form\x0cfeed", "next\x85line", "line\u2028sep"]
    for index, name in enumerate(names):
        write_audio(folder / f"{name}.wav", speech_like(0.8, index, 16000), 16000)
    # A text line cannot hold a tab or a line break: refused up front, naming the file
    assert "--units-format jsonl or parquet" in run_cli(
        capsys, source_dir, folder, tmp_path / "txt", "--units", "codebook"
    )
    assert not (tmp_path / "txt").exists()
    output = tmp_path / "jsonl"
    argv = ["extract", str(source_dir), str(folder), str(output), *LAYER, "--units", "codebook"]
    for _ in range(2):  # the rerun reads its own file back
        assert main([*argv, "--units-format", "jsonl"]) == 0
    rows = [json.loads(line) for line in (output / "units.jsonl").read_text(encoding="utf-8").split("\n")[:-1]]
    assert sorted(row["id"] for row in rows) == sorted(names)


def test_a_units_file_named_like_features_is_refused(source_dir, many_files, tmp_path, capsys):
    units_file = tmp_path / "spk0" / "utt00.pt"
    message = run_cli(capsys, source_dir, many_files, tmp_path, "--units", "codebook", "--units-file", units_file)
    assert ".pt files are the features' names" in message
    assert not list(tmp_path.rglob("*.pt"))


def test_features_on_one_thread_equal_features_with_decoding_workers(source_dir, many_files, one_process, tmp_path):
    for workers in (0, 2):
        output = tmp_path / f"w{workers}"
        extract(source_dir, many_files, output, layer=3, batch_seconds=4.0, num_workers=workers)
        assert features_of(output) == features_of(one_process)
    assert torch.load(next(output.rglob("*.pt"))).dtype == torch.float32
    assert os.listdir(output)


@pytest.fixture
def hub_api(monkeypatch):
    from test_hub import RecordingHfApi

    from spidr_hf.hub import push as push_module

    RecordingHfApi.instances = []
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(push_module, "HfApi", RecordingHfApi)
    return RecordingHfApi


def test_push_units_uploads_the_parquet_files_and_a_card_in_one_commit(one_process, tmp_path, hub_api, capsys):
    from datasets import load_dataset

    folder = one_process.with_name("parquet")
    dry_run = tmp_path / "dry"
    assert main(["push-units", str(folder), "--repo-id", "me/units", "--dry-run", str(dry_run)]) == 0
    assert not hub_api.instances  # a dry run needs no token and makes no call
    rows = load_dataset(str(dry_run), split="train")
    reference = load_dataset("parquet", data_files=f"{folder}/**/*.parquet", split="train")
    assert sorted(rows["id"]) == sorted(reference["id"]) and rows.num_rows == len(SECONDS)
    card = (dry_run / "README.md").read_text()
    assert "path: data/*.parquet" in card and str(folder.parent) not in card  # no local path is published

    assert main(["push-units", str(folder), "--repo-id", "me/units", "--private"]) == 0
    api = hub_api.instances[0]
    assert [name for name, _ in api.calls] == ["whoami", "create_repo", "upload_folder"]
    assert api.calls[1][1]["repo_type"] == api.calls[2][1]["repo_type"] == "dataset"
    assert api.uploaded == {
        path.relative_to(dry_run).as_posix(): path.read_bytes() for path in dry_run.rglob("*") if path.is_file()
    }
    assert "Uploaded me/units" in capsys.readouterr().out


def test_push_units_refuses_what_is_not_a_finished_parquet_extraction(
    source_dir, many_files, one_process, tmp_path, hub_api, capsys
):
    def refused(*argv) -> str:
        with pytest.raises(SystemExit):
            main(["push-units", *map(str, argv)])
        return capsys.readouterr().err

    assert "holds no parquet units" in refused(one_process, "--repo-id", "me/units")
    partial = tmp_path / "partial"
    argv = [source_dir, many_files, partial, *LAYER, "--units", "codebook", "--units-format", "parquet"]
    assert main(["extract", *map(str, argv), "--shard", "0/2"]) == 0
    assert "is not finished" in refused(partial, "--repo-id", "me/units")
    assert "not an output folder of spidr-hf extract" in refused(tmp_path, "--repo-id", "me/units")
    assert "--repo-id must be ORG/NAME" in refused(one_process.with_name("parquet"), "--repo-id", "units")
    # A dry run inside the extract folder: the documented **/*.parquet glob of the folder would read every row twice
    finished = one_process.with_name("parquet")
    error = refused(finished, "--repo-id", "me/units", "--dry-run", finished / "release")
    assert f"--dry-run {finished / 'release'} is inside {finished}" in error and error.count("\n") == 1
    assert not (finished / "release").exists()
    assert not hub_api.instances


@pytest.mark.slow
def test_compiled_extraction_gives_the_features_of_eager(source_dir, many_files, one_process, tmp_path):
    output = tmp_path / "compiled"
    extract(source_dir, many_files, output, layer=3, batch_seconds=4.0, compile=True)
    eager = {id: torch.load(one_process / f"{id}.pt") for id in ids()}
    for id, features in eager.items():
        torch.testing.assert_close(torch.load(output / f"{id}.pt"), features, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("units_format", ["txt", "jsonl"])
def test_a_finished_units_file_counts_the_rows_it_reads(tmp_path, units_format):
    from spidr_hf.units.formats import UnitsOutput

    def line(id: str, units: list[int]) -> str:
        if units_format == "txt":
            return f"{id}\t{' '.join(map(str, units))}\n"
        return json.dumps({"id": id, "units": units}) + "\n"

    path = tmp_path / f"units.{units_format}"
    # a rerun may leave an id twice (the first wins) and a kill a cut-off last line (left out)
    path.write_text(line("a", [1, 2]) + line("b", [3]) + line("a", [4]) + line("d", [5, 6])[:-3])
    units_out = UnitsOutput(path, units_format, deduplicate=False)
    rows = dict(units_out.iter_units())
    assert list(rows) == ["a", "b"] and rows["a"].tolist() == [1, 2]
    assert units_out.num_rows() == 2
    assert UnitsOutput(tmp_path / "absent.txt", units_format, deduplicate=False).num_rows() == 0
