"""
`spidr-hf evaluate --item/--audio/--alignments` on a ZeroSpeech-layout folder written from the built-in corpus (wav
files, its item file, TextGrid and TSV alignments of its phones) gives the built-in path's numbers; bad sets are
one-line errors.
"""

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_audio

from spidr_hf.data.aligned_speech import load_split
from spidr_hf.evaluation import evaluate_model
from spidr_hf.evaluation.items import ITEM_FILE
from spidr_hf.evaluation.standard import read_alignments
from spidr_hf_cli import main

# Codebook units of the heads' layers and k-means units, on few layers and clusters to keep it quick
SETTINGS = {"layers": [1, 4], "units": ["codebook", "kmeans"], "num_clusters": 8, "kmeans_frames": 500, "seed": 3}


def textgrid(phones: list[dict]) -> str:
    """A long-form Praat TextGrid as MFA writes it: a words tier, then the phones tier."""
    end = phones[-1]["end"]
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {end!r}"]
    lines += ["tiers? <exists>", "size = 2", "item []:"]
    tiers = {"words": [{"phone": 'a "word"', "start": 0.0, "end": end}], "phones": phones}
    for number, (name, intervals) in enumerate(tiers.items(), start=1):
        lines += [f"    item [{number}]:", '        class = "IntervalTier"', f'        name = "{name}"']
        lines += ["        xmin = 0", f"        xmax = {end!r}", f"        intervals: size = {len(intervals)}"]
        for index, interval in enumerate(intervals, start=1):
            label = interval["phone"].replace('"', '""')
            lines += [f"        intervals [{index}]:", f"            xmin = {interval['start']!r}"]
            lines += [f"            xmax = {interval['end']!r}", f'            text = "{label}"']
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def zerospeech(corpus, tmp_path_factory) -> dict[str, Path]:
    """
    The corpus's dev split as a ZeroSpeech-layout set: ID.wav files, the item file, a folder of ID.TextGrid and a TSV
    of the phones; and its train split as a folder of wav files named in split order (for k-means).
    """
    root = tmp_path_factory.mktemp("zerospeech")
    paths = {name: root / name for name in ("audio", "textgrids", "kmeans")}
    for folder in paths.values():
        folder.mkdir()
    paths["item"] = root / "dev.item"
    shutil.copy(corpus / ITEM_FILE, paths["item"])
    rows = ["file\tstart\tend\tphone"]
    for utterance in load_split(corpus, "dev"):
        write_audio(paths["audio"] / f"{utterance.id}.wav", utterance.audio)
        (paths["textgrids"] / f"{utterance.id}.TextGrid").write_text(textgrid(utterance.phones))
        rows += [f"{utterance.id}\t{p['start']!r}\t{p['end']!r}\t{p['phone']}" for p in utterance.phones]
    paths["tsv"] = root / "alignments.tsv"
    paths["tsv"].write_text("\n".join(rows) + "\n")
    # load_random_audio draws train utterances by their index in the split: sorted names keep that order
    for index, utterance in enumerate(load_split(corpus, "train")):
        write_audio(paths["kmeans"] / f"{index:05d}-{utterance.id}.wav", utterance.audio)
    return paths


@pytest.fixture(scope="module")
def builtin_report(corpus, source_dir):
    return evaluate_model(source_dir, corpus, **SETTINGS)


def test_alignments_read_back_as_the_corpus_phones(corpus, zerospeech):
    expected = {utterance.id: utterance.phones for utterance in load_split(corpus, "dev")}
    assert read_alignments(zerospeech["textgrids"]) == expected
    assert read_alignments(zerospeech["tsv"]) == expected


def test_two_textgrids_of_one_name_are_an_error_not_a_guess(corpus, zerospeech, tmp_path):
    grids = tmp_path / "textgrids"
    shutil.copytree(zerospeech["textgrids"], grids)
    first = sorted(grids.iterdir())[0]
    (grids / "old").mkdir()
    shutil.copy(sorted(grids.glob("*.TextGrid"))[1], grids / "old" / first.name)  # another file's phones, same name
    with pytest.raises(ValueError, match=f"Several TextGrid files in .* have the name of {first.stem}") as error:
        read_alignments(grids)
    assert "\n" not in str(error.value)
    others = [utterance.id for utterance in load_split(corpus, "dev") if utterance.id != first.stem]
    assert read_alignments(grids, others).keys() == set(others)  # a duplicate nobody asks for is no problem


@pytest.mark.slow
@pytest.mark.parametrize("alignment_form", ["textgrids", "tsv"])
def test_standard_set_gives_the_builtin_numbers(zerospeech, source_dir, builtin_report, alignment_form):
    report = evaluate_model(
        source_dir,
        item_file=zerospeech["item"],
        audio_dir=zerospeech["audio"],
        alignments=zerospeech[alignment_form],
        kmeans_audio_dir=zerospeech["kmeans"],
        **SETTINGS,
    )
    assert report.num_abx_tokens == builtin_report.num_abx_tokens
    assert (report.dataset, report.split) == (str(zerospeech["audio"]), "dev.item")
    assert report.table() == builtin_report.table()
    assert {row[1] for row in report.table()} == {"layer_results", "codebook", "kmeans", "log_mel"}
    assert {"abx_within", "pnmi", "bitrate"} <= set(report.metrics())


@pytest.mark.slow
def test_cli_without_alignments_gives_abx_only(zerospeech, source_dir, builtin_report, tmp_path, capsys):
    output = tmp_path / "report"
    arguments = ["--item", str(zerospeech["item"]), "--audio", str(zerospeech["audio"]), "--output", str(output)]
    arguments += ["--layers", "1,4", "--units", "codebook", "--seed", "3"]
    assert main(["evaluate", str(source_dir), *arguments]) == 0
    assert f"on {zerospeech['audio']} (dev.item," in capsys.readouterr().out
    report = json.loads((output / "results.json").read_text())
    assert report["dataset"] == str(zerospeech["audio"])
    figures = {(r["system"], r["representation"], r["layer"], r["metric"]): r["value"] for r in report["results"]}
    assert {key[3] for key in figures} == {"abx_within"}  # one dev speaker: no across-speaker triplets
    expected = {
        (r.system, r.representation, r.layer, r.metric): r.value
        for r in builtin_report.results
        if r.metric == "abx_within" and r.representation != "kmeans"
    }
    assert figures == expected
    assert (output / "abx.png").is_file()
    assert not (output / "pnmi.png").exists() and not list(output.glob("cooccurrence_*.png"))  # no phones


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _evaluate_error(source_dir, zerospeech, capsys, **paths) -> str:
    paths = {"item": zerospeech["item"], "audio": zerospeech["audio"], **paths}
    arguments = [f"--{name}={path}" for name, path in paths.items()]
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(source_dir), "--layers", "4", "--units", "codebook", *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error.rstrip("\n").split("\n")[-1]  # the lines before are progress bars


def test_missing_and_unreadable_audio_files_are_named(zerospeech, source_dir, tmp_path, capsys):
    audio = _copy(zerospeech["audio"], tmp_path)
    wavs = sorted(audio.glob("*.wav"))
    total = len(wavs)
    assert total > 5  # more missing files than the error names
    for wav in wavs:
        wav.unlink()
    error = _evaluate_error(source_dir, zerospeech, capsys, audio=audio)
    named = ", ".join(wav.stem for wav in wavs[:5])
    assert error.endswith(
        f"{total} of the {total} audio files named in the item file are not in {audio}: {named} and {total - 5} more"
    )
    shutil.rmtree(audio)
    audio = _copy(zerospeech["audio"], tmp_path)
    (audio / wavs[3].name).write_bytes(b"not audio at all")
    error = _evaluate_error(source_dir, zerospeech, capsys, audio=audio)
    assert f"Cannot read 1 audio file(s) named in the item file: {wavs[3].stem} (" in error


def test_malformed_alignments_name_the_line(zerospeech, source_dir, tmp_path, capsys):
    grids = _copy(zerospeech["textgrids"], tmp_path)
    grid = sorted(grids.glob("*.TextGrid"))[2]
    lines = grid.read_text().splitlines()
    number = next(n for n, line in enumerate(lines, start=1) if line.strip().startswith("xmax") and n > 30)
    lines[number - 1] = "            xmax = "
    grid.write_text("\n".join(lines) + "\n")
    error = _evaluate_error(source_dir, zerospeech, capsys, alignments=grids)
    assert f"{grid}:{number + 1}: expected an interval's xmax, got " in error  # the label came where xmax was due

    table = tmp_path / "alignments.tsv"
    rows = zerospeech["tsv"].read_text().splitlines()
    rows[5] = rows[5].rsplit("\t", 1)[0]
    table.write_text("\n".join(rows) + "\n")
    error = _evaluate_error(source_dir, zerospeech, capsys, alignments=table)
    assert f"{table}:6: expected 4 fields (file start end phone), got 3" in error

    without_phones = tmp_path / "words_only"
    without_phones.mkdir()
    original = (zerospeech["textgrids"] / grid.name).read_text()
    (without_phones / grid.name).write_text(original.replace('name = "phones"', 'name = "syllables"'))
    error = _evaluate_error(source_dir, zerospeech, capsys, alignments=without_phones)
    assert f"{grid.name} has no 'phones' interval tier (tiers: words, syllables)" in error

    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(zerospeech["textgrids"] / grid.name, partial)
    error = _evaluate_error(source_dir, zerospeech, capsys, alignments=partial)
    assert f"{partial} has no alignment of {len(list(grids.iterdir())) - 1} file(s): " in error


def test_dataset_and_item_set_are_exclusive(corpus, zerospeech, source_dir, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", str(source_dir), "--dataset", str(corpus), "--item", str(zerospeech["item"])])
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(source_dir), "--item", str(zerospeech["item"])])
    assert "--item FILE --audio DIR" in capsys.readouterr().err


SHORT_TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

0
1.5
<exists>
2
"TextTier"
"events"
0
1.5
1
0.7
"a ""click"" sound"
"IntervalTier"
"speaker1 - phones"
0
1.5
3
0
0.5
""
0.5
1.2
"AH0"
1.2
1.5
"T"
"""


def test_short_utf16_textgrid_and_csv(tmp_path):
    """Praat's short form (also written as UTF-16), point tiers skipped, MFA's empty intervals labelled silence."""
    expected = [
        {"phone": "sil", "start": 0.0, "end": 0.5},
        {"phone": "AH0", "start": 0.5, "end": 1.2},
        {"phone": "T", "start": 1.2, "end": 1.5},
    ]
    (tmp_path / "a.TextGrid").write_text(SHORT_TEXTGRID, encoding="utf-8")
    (tmp_path / "b.TextGrid").write_text(SHORT_TEXTGRID, encoding="utf-16")
    assert read_alignments(tmp_path) == {"a": expected, "b": expected}
    table = tmp_path / "alignments.csv"
    table.write_text("b,1.2,1.5,T\nb,0.0,0.5,sil\nb, 0.5 ,1.2,AH0\n")  # rows in any order, no header
    assert read_alignments(table) == {"b": expected}
    table.write_text("b,0.0,x,sil\n")
    with pytest.raises(ValueError, match=r"alignments.csv:1: start and end must be numbers, got '0.0' and 'x'"):
        read_alignments(table)


def test_audio_in_hidden_folders_is_not_the_sets(tmp_path):
    """A copy in .Trash or .git is no second file of an id: hidden files and folders are not audio of the set."""
    from spidr_hf.evaluation.standard import find_audio

    for name in ("a.wav", "sub/b.flac", ".Trash/a.wav", "sub/.git/b.flac", ".a.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert find_audio(tmp_path, ["a", "b"]) == {"a": tmp_path / "a.wav", "b": tmp_path / "sub" / "b.flac"}
