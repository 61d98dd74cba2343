"""The spoken-LM ladder, end to end at a tiny scale (scripts/ladder.sh --tiny): every stage, every source, resumable."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("phones", "text_phones", "log_mel", "random_init")
SOURCES += tuple(f"codebook_l{layer}" for layer in (4, 5, 6)) + tuple(f"kmeans_l{layer}" for layer in (2, 4, 6))
KINDS = {"log_mel": ("log_mel", None), "codebook_l6": ("codebook", 6), "kmeans_l2": ("kmeans", 2)}
KINDS["random_init"] = ("codebook", 6)
STAGES = ("corpus", "benchmark", "pretrain", "kmeans", "units", "ulm", "score", "quality")


def ladder(work: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "scripts/slm_ladder.py"), "--tiny", "--work", str(work)]
    return subprocess.run([*command, "--threads", "1", "--jobs", "2"], capture_output=True, text=True)


@pytest.mark.slow
def test_the_tiny_ladder_scores_every_source_with_intervals_and_a_rerun_resumes(tmp_path):
    from spidr_hf.units.record import read_unit_sequences

    completed = ladder(tmp_path / "ladder")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    work = tmp_path / "ladder"
    summary = json.loads((work / "summary.json").read_text())
    assert sorted(summary["sources"]) == sorted(SOURCES)
    for name, row in summary["sources"].items():
        for benchmark in ("swuggy", "sblimp", "ssc", "tsc"):
            for kind in ("sum", "mean"):
                value = row[f"{benchmark}_{kind}"]
                assert value["ci95"][0] <= value["all"] <= value["ci95"][1], (name, benchmark, kind)
        # ABX and PNMI of every source with speech, measured on its own units
        assert (row["pnmi"] is None) == (name == "text_phones")
    assert summary["sources"]["phones"]["abx_within"] == 0 and summary["sources"]["phones"]["pnmi"] > 0.8
    # Each unit LM was trained on the units of the whole corpus, and SpidR's units came from its own encoders
    train_ids = set(read_unit_sequences(work / "sources/phones/train-units")[1])
    for name in KINDS:
        identity, units = read_unit_sequences(work / "sources" / name / "train-units")
        assert set(units) == train_ids
        assert (identity.kind, identity.layer) == KINDS[name]
    assert summary["spearman"]["without_gold_phones"]["pnmi~swuggy"]["n"] == 8
    assert summary["spearman"]["all"]["abx_within~tsc"]["n"] == 9
    assert set(summary["stage_seconds"]) == set(STAGES)
    for name in ("summary.md", "ladder.png", "correlation.png"):
        assert (work / name).stat().st_size > 0
    assert "Goal, gold-phone topline sWUGGY >= 75 %" in (work / "summary.md").read_text()

    # A rerun finds every stage done: nothing runs again, the scores stay
    scores = (work / "sources/kmeans_l4/score/scores.json").read_bytes()
    stages = (work / "stages.json").read_bytes()
    again = ladder(work)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ " not in again.stdout  # no command ran
    assert (work / "stages.json").read_bytes() == stages  # no stage did any work
    assert (work / "sources/kmeans_l4/score/scores.json").read_bytes() == scores


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--hours", "-1"], "argument --hours: must be a positive number, got -1"),
        (["--jobs", "0"], "argument --jobs: must be a positive integer, got 0"),
        (["--threads", "0"], "argument --threads: must be a positive integer, got 0"),
        (["--ulm-steps", "0"], "argument --ulm-steps: must be a positive integer, got 0"),
        (["--work", "{file}"], "is a file: give a new folder"),
        (["--model", "{missing}"], "has no config.json: give a saved SpidR folder"),
    ],
)
def test_the_ladder_refuses_bad_arguments_before_any_stage(tmp_path, arguments, message):
    """The probes of issue 36's second round: a traceback, a hang (--jobs 0), or a model pretrained into a typo."""
    (tmp_path / "a_file").write_text("mine")
    places = {"file": tmp_path / "a_file", "missing": tmp_path / "typo_model"}
    arguments = [argument.format(**places) for argument in arguments]
    work = [] if "--work" in arguments else ["--work", str(tmp_path / "work")]
    command = [sys.executable, str(ROOT / "scripts/slm_ladder.py"), "--tiny", *work, *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2 and message in completed.stderr.strip().splitlines()[-1], completed.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "typo_model").exists()
    assert (tmp_path / "a_file").read_text() == "mine"
