"""`spidr-hf extract`: features and units of audio files on disk, as the pipelines and the model give them."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_audio
from transformers import AutoModelForPreTraining, pipeline

from spidr_hf import SpidrFeatureExtractor
from spidr_hf.model.configuration_spidr import SAMPLING_RATE
from spidr_hf.model.pipeline_spidr import load_audio
from spidr_hf.units import extract as extract_module
from spidr_hf.units.extract import extract
from spidr_hf_cli import main

# (relative path, seconds, sampling rate of the file): subfolders, several formats, resampling
FILES = [("a.wav", 1.3, 16000), ("sub/b.flac", 2.9, 22050), ("sub/deeper/c.wav", 0.7, 16000)]


def speech_like(seconds: float, seed: int, rate: int) -> np.ndarray:
    """A gliding tone with noise under a syllable envelope (no silence, which random models amplify)."""
    rng = np.random.default_rng(seed)
    time = np.arange(int(seconds * rate)) / rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * time + rng.uniform(0, 6))
    tone = np.sin(2 * np.pi * np.cumsum(150 + 100 * np.sin(np.pi * time)) / rate)
    return (0.4 * envelope * (tone + 0.3 * rng.standard_normal(time.size))).astype(np.float32)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    for seed, (name, seconds, rate) in enumerate(FILES):
        write_audio(folder / name, speech_like(seconds, seed, rate), rate)
    (folder / "notes.txt").write_text("not audio")
    return folder


def ids() -> list[str]:
    return [str(Path(name).with_suffix("")) for name, _, _ in FILES]


def read_units(path: Path) -> dict[str, list[int]]:
    return parse_units(path.read_text())


def parse_units(text: str) -> dict[str, list[int]]:
    """`id<TAB>u1 u2 ...` lines; every line must be complete."""
    assert text.endswith("\n")
    lines = text.splitlines()
    return {line.split("\t")[0]: [int(unit) for unit in line.split("\t")[1].split()] for line in lines}


def test_features_equal_the_pipeline(source_dir, audio_dir, tmp_path):
    # One batch holds all three files: padded batches must give each file's single-pass features
    extract(source_dir, audio_dir, tmp_path, layer=3, batch_seconds=100)
    features = pipeline("spidr-features", model=str(source_dir), device="cpu")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [*(f"{id}.pt" for id in ids()), "extract.json"]
    )
    for name, _, _ in FILES:
        saved = torch.load(tmp_path / Path(name).with_suffix(".pt"))
        expected = features(str(audio_dir / name), layer=3)["features"]
        assert saved.dtype == torch.float32 and saved.shape == expected.shape
        np.testing.assert_allclose(saved.numpy(), expected, rtol=1e-4, atol=1e-5)
        assert saved.untyped_storage().nbytes() == saved.numel() * 4  # its own frames, not the whole batch's


def test_long_files_are_chunked_and_stitched_as_the_pipeline_does(source_dir, tmp_path):
    """A file longer than chunk_seconds: its features and units are the chunked pipeline's, never one long pass."""
    audio = tmp_path / "audio"
    write_audio(audio / "long.wav", speech_like(26.3, 5, 16000))
    write_audio(audio / "short.wav", speech_like(1.5, 6, 16000))
    model = AutoModelForPreTraining.from_pretrained(source_dir).eval()
    layer = model.config.codebook_layers[-1]
    out = tmp_path / "out"
    # Chunks of 10 s, batched 2 by 2 (batch_seconds 25): the long file's 3 chunks in two passes
    extract(source_dir, audio, out, layer=layer, units="codebook", features=True, batch_seconds=25, chunk_seconds=10)
    features = pipeline("spidr-features", model=str(source_dir), device="cpu")
    units = pipeline("spidr-units", model=str(source_dir), device="cpu")
    saved_units = read_units(out / "units.txt")
    for name in ("long", "short"):
        expected = features(str(audio / f"{name}.wav"), layer=layer, chunk_length_s=10)["features"]
        saved = torch.load(out / f"{name}.pt")
        assert saved.shape == expected.shape
        np.testing.assert_allclose(saved.numpy(), expected, rtol=1e-4, atol=1e-5)
        expected_units = units(str(audio / f"{name}.wav"), layer=layer, chunk_length_s=10)["units"].tolist()
        assert saved_units[name] == expected_units
    single_pass = features(str(audio / "long.wav"), layer=layer, chunk_length_s=30)["features"]
    long = torch.load(out / "long.pt").numpy()
    assert single_pass.shape == long.shape and not np.allclose(single_pass, long, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("torch-full", "no space left on the device"),  # torch.save's zip writer on a full disk
        ("enospc", "no space left on the device"),
        ("eacces", "permission denied"),
    ],
)
def test_a_full_disk_or_a_refused_write_is_one_line_naming_the_file(
    source_dir, audio_dir, tmp_path, capsys, monkeypatch, failure, message
):
    import errno
    import shutil

    real_save = torch.save

    def failing_save(tensor, path):
        real_save(tensor, path)  # a partial file is left for the cleanup to remove
        if failure == "torch-full":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        code = errno.ENOSPC if failure == "enospc" else errno.EACCES
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(extract_module.torch, "save", failing_save)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))  # all but full
    error = run_cli(capsys, source_dir, audio_dir, tmp_path / "out")
    assert "Could not write" in error and ".pt: " + message in error
    assert not [path for path in (tmp_path / "out").rglob("*") if path.name.endswith(".partial")]
    # The same failure of the units file (txt, appended line by line)
    monkeypatch.undo()
    real_open = open

    class FullFile:
        def __init__(self, file):
            self.file = file

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

    def opening(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return FullFile(file) if mode == "a" else file

    monkeypatch.setattr("builtins.open", opening)
    error = run_cli(capsys, source_dir, audio_dir, tmp_path / "units", "--units", "codebook")
    assert "Could not write" in error and "no space left on the device" in error


def test_hidden_states_equal_the_pipeline(source_dir, audio_dir, tmp_path):
    extract(source_dir, audio_dir, tmp_path, layer=0, hidden_states=True, batch_seconds=100)
    features = pipeline("spidr-features", model=str(source_dir), device="cpu")
    name = FILES[1][0]
    expected = features(str(audio_dir / name), layer=0, representation="hidden_states")["features"]
    np.testing.assert_allclose(torch.load(tmp_path / "sub/b.pt").numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("units_file", ["deduplicated.txt", "deduplicated.jsonl"])
def test_codebook_units_equal_get_units(source_dir, audio_dir, tmp_path, units_file):
    model = AutoModelForPreTraining.from_pretrained(source_dir).eval()
    layer = model.config.codebook_layers[-1]
    extract(source_dir, audio_dir, tmp_path, layer=layer, features=False, units="codebook", batch_seconds=100)
    extract(
        source_dir,
        audio_dir,
        tmp_path / "dedup",
        layer=layer,
        features=False,
        units="codebook",
        units_file=tmp_path / units_file,
        deduplicate=True,
    )
    assert not list(tmp_path.rglob("*.pt"))
    units = read_units(tmp_path / "units.txt")
    if units_file.endswith(".jsonl"):
        import json

        deduplicated = {row["id"]: row["units"] for row in map(json.loads, (tmp_path / units_file).open())}
    else:
        deduplicated = read_units(tmp_path / units_file)
    assert sorted(units) == sorted(deduplicated) == sorted(ids())
    for name, _, _ in FILES:
        audio = load_audio(audio_dir / name, None, SAMPLING_RATE)
        inputs = SpidrFeatureExtractor()(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
        expected = model.get_units(**inputs, layer=layer)
        id = str(Path(name).with_suffix(""))
        assert units[id] == expected[0].tolist()
        runs = [unit for index, unit in enumerate(units[id]) if index == 0 or units[id][index - 1] != unit]
        assert deduplicated[id] == runs


def test_a_manifest_names_files_relative_to_its_folder(source_dir, audio_dir, tmp_path):
    manifest = audio_dir / "manifest.txt"
    manifest.write_text("# one path per line\nsub/b.flac\n\na.wav\n")
    try:
        extract(source_dir, manifest, tmp_path, layer=2)
    finally:
        manifest.unlink()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.pt")) == ["a.pt", "sub/b.pt"]


def test_resume_skips_written_files_and_completes_the_rest(source_dir, audio_dir, tmp_path):
    kwargs = {"layer": 3, "units": "codebook", "features": True, "batch_seconds": 2.0}
    extract(source_dir, audio_dir, tmp_path, **kwargs)
    complete = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    units_file = tmp_path / "units.txt"
    lines = units_file.read_text().splitlines(keepends=True)
    kept = next(line for line in lines if line.startswith("a\t"))
    # An interrupted run: c.pt never written, units of a only, and a cut-off line for b
    (tmp_path / "sub/deeper/c.pt").unlink()
    cut = next(line for line in lines if line.startswith("sub/b\t"))[:7]
    units_file.write_text(kept + cut)
    # A file written again is a new inode (written aside, then renamed), whether or not the clock moved meanwhile
    written = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in tmp_path.rglob("*.pt")}
    extract(source_dir, audio_dir, tmp_path, **kwargs)
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in written} == written  # not written again
    assert {path: path.read_bytes() for path in tmp_path.rglob("*.pt")} == {
        path: content for path, content in complete.items() if path.suffix == ".pt"
    }
    assert units_file.read_text().startswith(kept)
    assert read_units(units_file) == parse_units(complete[units_file].decode())


def test_an_interrupted_write_leaves_no_partial_file(source_dir, audio_dir, tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def save_then_die(tensor, path):  # the second file's write is cut off half-way
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half a tensor")
            raise KeyboardInterrupt
        real_save(tensor, path)

    monkeypatch.setattr(extract_module.torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract(source_dir, audio_dir, tmp_path, layer=2, batch_seconds=1.0)  # one file per batch
    files = [path for path in tmp_path.rglob("*") if path.is_file() and path.name != "extract.json"]
    assert len(files) == 1 and files[0].suffix == ".pt"  # the first file, and nothing of the second
    first = torch.load(files[0])
    monkeypatch.setattr(extract_module.torch, "save", real_save)
    extract(source_dir, audio_dir, tmp_path, layer=2, batch_seconds=1.0)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [*(f"{id}.pt" for id in ids()), "extract.json"]
    )
    assert torch.equal(torch.load(files[0]), first)


def run_cli(capsys, *argv: str) -> str:
    """The one-line error of `spidr-hf extract ARGV` (layer 3 of the tiny model unless ARGV says otherwise)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--layer", "3", *map(str, argv)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err  # after progress bars, which use carriage returns
    assert error.count("spidr-hf extract: error: ") == 1
    return error.split("spidr-hf extract: error: ")[1].splitlines()[0]


def test_an_undecodable_file_is_named_before_any_work(source_dir, audio_dir, tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "good.wav").write_bytes((audio_dir / "a.wav").read_bytes())
    (audio / "broken.flac").write_bytes(b"fLaC but not really")
    output = tmp_path / "out"
    message = run_cli(capsys, source_dir, audio, output)
    assert "broken.flac" in message and "Could not decode" in message
    assert not output.exists()


def test_user_errors(source_dir, audio_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert "is a file" in run_cli(capsys, source_dir, audio_dir, tmp_path / "file")
    (tmp_path / "empty").mkdir()
    assert "holds no audio file" in run_cli(capsys, source_dir, tmp_path / "empty", tmp_path / "out")
    assert "no k-means centroids" in run_cli(capsys, source_dir, audio_dir, tmp_path / "out", "--units", "kmeans")
    assert "no codebook head" in run_cli(
        capsys, source_dir, audio_dir, tmp_path / "out", "--units", "codebook", "--layer", "1"
    )
    assert "Layer 0 is not a layer of this model: it has layers 1 to 4" in run_cli(
        capsys, source_dir, audio_dir, tmp_path / "out", "--layer", "0"
    )
    manifest = tmp_path / "list.txt"
    manifest.write_text("a.wav\nmissing.wav\n")
    assert "missing.wav" in run_cli(capsys, source_dir, manifest, tmp_path / "out")
    assert "Cannot load the model" in run_cli(capsys, tmp_path / "empty", audio_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def output_files(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def kmeans_dir(source_dir, audio_dir, tmp_path_factory) -> Path:
    """The tiny model with k-means centroids of layer 3: frames of that layer's results, so that units vary."""
    from spidr_hf import SpidrForPreTraining

    model = SpidrForPreTraining.from_pretrained(source_dir).eval()
    audio = load_audio(audio_dir / "sub/b.flac", None, SAMPLING_RATE)
    inputs = SpidrFeatureExtractor()(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    with torch.no_grad():
        results = model.spidr(inputs["input_values"], output_layer_results=True).layer_results[KMEANS_LAYER - 1]
    model.spidr.set_kmeans_centroids(KMEANS_LAYER, results[0, ::17][:8].float().clone())
    folder = tmp_path_factory.mktemp("kmeans") / "model"
    model.save_pretrained(folder)
    SpidrFeatureExtractor().save_pretrained(folder)
    return folder


KMEANS_LAYER = 3


@pytest.mark.slow
def test_unit_ids_beyond_int16_survive_every_units_format(source_dir, audio_dir, tmp_path):
    """40,000 k-means centroids: ids up to 39,999, which parquet units stored as int16 wrapped to negative ones."""
    from spidr_hf import SpidrForPreTraining
    from spidr_hf.units.record import read_unit_sequences

    model = SpidrForPreTraining.from_pretrained(source_dir).eval()
    audio = load_audio(audio_dir / "sub/b.flac", None, SAMPLING_RATE)
    inputs = SpidrFeatureExtractor()(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    with torch.no_grad():
        frames = model.spidr(inputs["input_values"], output_layer_results=True).layer_results[KMEANS_LAYER - 1][0]
    # Frames of the layer as the last 8 centroids and the first 4, the others far from any frame
    centroids = torch.full((40_000, model.config.hidden_size), 1e3)
    centroids[-8:], centroids[:4] = frames[::17][:8], frames[5::17][:4]
    model.spidr.set_kmeans_centroids(KMEANS_LAYER, centroids)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    SpidrFeatureExtractor().save_pretrained(folder)
    units = {}
    for units_format in ("txt", "jsonl", "parquet"):
        output = tmp_path / units_format
        extract(folder, audio_dir, output, features=False, units="kmeans", units_format=units_format)
        identity, units[units_format] = read_unit_sequences(output)
        assert identity.num_units == 40_000
    written = {id: values.tolist() for id, values in units["txt"].items()}  # text: the ids themselves
    assert max(max(values) for values in written.values()) >= 2**15 and min(min(v) for v in written.values()) >= 0
    for units_format in ("jsonl", "parquet"):
        assert {id: values.tolist() for id, values in units[units_format].items()} == written, units_format
    import pyarrow.parquet as pq

    (parquet_file,) = (tmp_path / "parquet" / "units").glob("*.parquet")
    assert str(pq.read_schema(parquet_file).field("units").type) == "list<element: int32>"
    assert "`units` (int32)" in (tmp_path / "parquet" / "README.md").read_text()


@pytest.mark.parametrize(
    ("first", "rerun", "changes"),
    [
        (["--units", "codebook"], ["--units", "kmeans"], ['units: "codebook" -> "kmeans"']),
        (["--units", "codebook"], ["--units", "codebook", "--deduplicate"], ["deduplicate: false -> true"]),
        (["--layer", "2"], ["--layer", "3"], ["layer: 2 -> 3"]),
        (["--layer", "2"], ["--layer", "2", "--hidden-states"], ['representation: "layer_results" -> "hidden_states"']),
        (["--layer", "2"], ["--layer", "2", "--dtype", "bfloat16"], ['dtype: "float32" -> "bfloat16"']),
        (["--layer", "2"], ["--layer", "2", "--chunk-seconds", "30"], ["chunk_seconds: 60.0 -> 30.0"]),
        # Features and units asked in separate runs: the rule is equal settings, so the second is refused
        (["--units", "codebook"], ["--features", "--units", "codebook"], ["features: false -> true"]),
    ],
)
def test_a_rerun_with_other_settings_is_refused(kmeans_dir, audio_dir, tmp_path, capsys, first, rerun, changes):
    output = tmp_path / "out"
    assert main(["extract", str(kmeans_dir), str(audio_dir), str(output), "--layer", "3", *first]) == 0
    written = output_files(output)
    message = run_cli(capsys, kmeans_dir, audio_dir, output, *rerun)
    assert all(change in message for change in changes), message
    assert "another output folder" in message
    assert output_files(output) == written  # nothing kept as if it were the new settings' outputs, nothing changed
    # The same settings again, the model folder by another path: a resume that has nothing left to do
    same_model = kmeans_dir.parent / ".." / kmeans_dir.parent.name / kmeans_dir.name
    assert main(["extract", str(same_model), str(audio_dir), str(output), "--layer", "3", *first]) == 0
    assert output_files(output) == written


def test_outputs_no_record_says_extract_wrote_are_refused(source_dir, audio_dir, tmp_path, capsys):
    # .pt files from another program (or from extract before it kept records): not mixed with this run's
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a.pt").write_bytes(b"someone else's tensor")
    message = run_cli(capsys, source_dir, audio_dir, foreign)
    assert str(foreign) in message and ".pt" in message and "another output folder" in message
    assert output_files(foreign) == {foreign / "a.pt": b"someone else's tensor"}
    # A folder with other files only is fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "README").write_text("mine")
    assert main(["extract", str(source_dir), str(audio_dir), str(other), "--layer", "2"]) == 0
    assert (other / "README").read_text() == "mine" and (other / "a.pt").is_file()


def test_a_units_file_extract_did_not_write_is_never_touched(source_dir, audio_dir, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\tfirst\nhalf a line with no end")
    default = tmp_path / "out-default"
    default.mkdir()
    (default / "units.txt").write_text("a\t1 2 3\n")
    refusals = [
        (notes, [tmp_path / "out", "--units", "codebook", "--units-file", notes]),
        (default / "units.txt", [default, "--units", "codebook"]),
    ]
    for path, argv in refusals:
        before = path.read_bytes()
        message = run_cli(capsys, source_dir, audio_dir, *argv)
        assert message == (
            f"{path} exists and was not written by spidr-hf extract into {argv[0]}: choose another --units-file"
        )
        assert path.read_bytes() == before
    assert not (tmp_path / "out").exists()
    # A units file outside OUTPUT is extract's in the OUTPUT whose record names it, and only there
    shared = tmp_path / "shared.txt"
    extract(source_dir, audio_dir, tmp_path / "a", layer=3, features=False, units="codebook", units_file=shared)
    complete = shared.read_text()
    shared.write_text(complete[: len(complete) - 3])  # cut off: resumed in its OUTPUT
    extract(source_dir, audio_dir, tmp_path / "a", layer=3, features=False, units="codebook", units_file=shared)
    assert read_units(shared) == parse_units(complete)
    message = run_cli(capsys, source_dir, audio_dir, tmp_path / "b", "--units", "codebook", "--units-file", shared)
    assert "was not written by spidr-hf extract into" in message
    assert read_units(shared) == parse_units(complete)


@pytest.mark.slow
@pytest.mark.parametrize("units_format", ["txt", "parquet"])
def test_of_two_jobs_started_at_once_with_one_units_file_the_second_is_refused(
    source_dir, kmeans_dir, audio_dir, tmp_path, monkeypatch, units_format
):
    """Job b checks the shared units file when job a has recorded it but written no unit yet: it finds it taken."""
    from spidr_hf.errors import SpidrError
    from spidr_hf.units.formats import UnitsOutput

    shared = tmp_path / ("shared.txt" if units_format == "txt" else "shared")
    options = {"layer": 3, "features": False, "units_file": shared, "units_format": units_format}
    real_open = UnitsOutput.open

    def open_after_job_b(self, shard):
        monkeypatch.setattr(UnitsOutput, "open", real_open)
        taken = "is being written by a spidr-hf extract job into another" if units_format == "txt" else "exists and was"
        with pytest.raises(SpidrError, match=taken):
            extract(kmeans_dir, audio_dir, tmp_path / "b", units="kmeans", **options)
        real_open(self, shard)

    monkeypatch.setattr(UnitsOutput, "open", open_after_job_b)
    extract(source_dir, audio_dir, tmp_path / "a", units="codebook", **options)
    assert not (tmp_path / "b" / "extract.json").exists()
    expected = tmp_path / "alone"
    extract(source_dir, audio_dir, expected, units="codebook", **{**options, "units_file": None})
    from spidr_hf.units.record import read_unit_sequences

    ours, alone = read_unit_sequences(tmp_path / "a")[1], read_unit_sequences(expected)[1]
    assert {id: units.tolist() for id, units in ours.items()} == {id: units.tolist() for id, units in alone.items()}


@pytest.mark.parametrize(
    ("units_file", "foreign_line"),
    [("u.jsonl", '{"a": 1}'), ("u.jsonl", "[1, 2]"), ("u.jsonl", "not json"), ("u.txt", "no tab on this line")],
)
def test_a_units_line_extract_cannot_have_written_is_named(
    source_dir, audio_dir, tmp_path, capsys, units_file, foreign_line
):
    path = tmp_path / units_file
    argv = [source_dir, audio_dir, tmp_path, "--units", "codebook", "--units-file", path]
    assert main(["extract", *map(str, argv), "--layer", "3"]) == 0
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + foreign_line + "\n" + "".join(lines[1:]))
    message = run_cli(capsys, *argv)
    assert message.startswith(f"{path}, line 2: not a")


def test_a_single_audio_file_is_an_input(source_dir, audio_dir, tmp_path):
    extract(source_dir, audio_dir / "sub/b.flac", tmp_path, layer=3, units="codebook")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.pt")) == ["b.pt"]  # id: its stem
    extract(source_dir, audio_dir, tmp_path / "all", layer=3, units="codebook")
    torch.testing.assert_close(torch.load(tmp_path / "b.pt"), torch.load(tmp_path / "all/sub/b.pt"))
    assert read_units(tmp_path / "units.txt") == {"b": read_units(tmp_path / "all/units.txt")["sub/b"]}


def test_too_short_files_are_named_before_any_work(source_dir, audio_dir, tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "long.wav").write_bytes((audio_dir / "sub/b.flac").read_bytes())
    for name in ("short1.wav", "short2.wav"):  # 160 samples, fewer than the receptive field of 400
        write_audio(audio / name, speech_like(0.01, 0, SAMPLING_RATE), SAMPLING_RATE)
    output = tmp_path / "out"
    message = run_cli(capsys, source_dir, audio, output, "--batch-seconds", "1")  # the long file's batch comes first
    assert "2 file(s)" in message and "short1.wav" in message and "short2.wav" in message
    assert "receptive field of 400 samples" in message
    assert not output.exists()


def test_kmeans_units_default_to_the_centroids_layer(kmeans_dir, audio_dir, tmp_path, capsys):
    from spidr_hf import SpidrModel

    assert main(["extract", str(kmeans_dir), str(audio_dir), str(tmp_path), "--units", "kmeans"]) == 0
    model = SpidrModel.from_pretrained(kmeans_dir).eval()
    units = read_units(tmp_path / "units.txt")
    assert sorted(units) == sorted(ids())
    for name, _, _ in FILES:
        audio = load_audio(audio_dir / name, None, SAMPLING_RATE)
        inputs = SpidrFeatureExtractor()(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
        assert units[str(Path(name).with_suffix(""))] == model.get_kmeans_units(**inputs)[0].tolist()
    assert len({unit for values in units.values() for unit in values}) > 1
    # Other extractions take the default feature layer: the paper's 6, clamped to the tiny model's 4 layers
    assert main(["extract", str(kmeans_dir), str(audio_dir), str(tmp_path / "features")]) == 0
    settings = json.loads((tmp_path / "features" / "extract.json").read_text())["settings"]
    assert settings["layer"] == 4


def test_manifest_messages(source_dir, audio_dir, tmp_path, capsys):
    manifest = audio_dir / "twice.txt"
    manifest.write_text("a.wav\nsub/b.flac\n./a.wav\n")
    try:
        assert run_cli(capsys, source_dir, manifest, tmp_path / "out") == f"a.wav is listed twice in {manifest}"
        # A byte order mark (some Windows editors write one) is not part of the first path
        manifest.write_text("\ufeffa.wav\nsub/b.flac\n", encoding="utf-8")
        extract(source_dir, manifest, tmp_path / "bom", layer=2)
    finally:
        manifest.unlink()
    assert sorted(str(p.relative_to(tmp_path / "bom")) for p in (tmp_path / "bom").rglob("*.pt")) == [
        "a.pt",
        "sub/b.pt",
    ]
    same_id = tmp_path / "same-id"
    same_id.mkdir()
    for name in ("a.wav", "a.flac"):
        (same_id / name).write_bytes((audio_dir / "a.wav").read_bytes())
    assert "share the id a (same path but for the extension)" in run_cli(capsys, source_dir, same_id, tmp_path / "o")


def test_cli_writes_features_and_units(source_dir, audio_dir, tmp_path):
    argv = [str(source_dir), str(audio_dir), str(tmp_path), "--features", "--units", "codebook", "--layer", "3"]
    assert main(["extract", *argv]) == 0
    assert sorted(read_units(tmp_path / "units.txt")) == sorted(ids())
    assert len(list(tmp_path.rglob("*.pt"))) == len(FILES)
    assert not any(path.name.endswith(".partial") for path in tmp_path.rglob("*"))
    assert os.path.getsize(tmp_path / "a.pt") > 0


def test_bfloat16_is_close_to_float32(source_dir, audio_dir, tmp_path):
    """Measured on this tiny random model: per-frame cosine >= 0.9996, every codebook unit equal."""
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        outputs[dtype] = tmp_path / dtype
        extract(source_dir, audio_dir, outputs[dtype], layer=3, units="codebook", dtype=dtype, batch_seconds=100)
    for id in ids():
        exact, bf16 = (torch.load(outputs[dtype] / f"{id}.pt") for dtype in ("float32", "bfloat16"))
        assert bf16.dtype == torch.float32 and bf16.shape == exact.shape
        assert not torch.equal(bf16, exact)  # it did run in bfloat16
        assert torch.nn.functional.cosine_similarity(bf16, exact, dim=-1).min() > 0.999
    exact_units, bf16_units = (read_units(outputs[dtype] / "units.txt") for dtype in ("float32", "bfloat16"))
    agreement = np.mean(np.concatenate([np.equal(exact_units[id], bf16_units[id]) for id in ids()]))
    assert agreement >= 0.9


@pytest.mark.slow
def test_extracted_features_give_the_abx_of_the_model(source_dir, corpus, tmp_path):
    """Read back, `extract`'s features and units give the ABX of the same model's outputs computed in memory."""
    from spidr_hf.data.aligned_speech import load_split
    from spidr_hf.evaluation.abx import abx_error
    from spidr_hf.evaluation.items import FRAME_RATE, ITEM_FILE, frame_span, read_item_file
    from spidr_hf.model.representations import ModelRepresentations

    audio_dir = tmp_path / "audio"
    utterances = load_split(corpus, "dev")
    for utterance in utterances:
        write_audio(audio_dir / f"{utterance.id}.wav", utterance.audio, SAMPLING_RATE)
    extract(source_dir, audio_dir, tmp_path / "out", layer=3, units="codebook")
    units = read_units(tmp_path / "out" / "units.txt")
    model = AutoModelForPreTraining.from_pretrained(source_dir)
    direct = ModelRepresentations(model, SpidrFeatureExtractor(), [3], [3], "cpu")
    decoded = [load_audio(audio_dir / f"{utterance.id}.wav", None, SAMPLING_RATE) for utterance in utterances]
    representations = direct(decoded)
    index = {utterance.id: position for position, utterance in enumerate(utterances)}
    items = read_item_file(corpus / ITEM_FILE)
    spans = [frame_span(item.onset, item.offset, FRAME_RATE) for item in items]
    labels = ([i.phone for i in items], [(i.prev_phone, i.next_phone) for i in items], [i.speaker for i in items])
    from_files = [torch.load(tmp_path / "out" / f"{i.file}.pt")[s:e] for i, (s, e) in zip(items, spans, strict=True)]
    in_memory = [representations.features[3][index[i.file]][s:e] for i, (s, e) in zip(items, spans, strict=True)]
    scores = abx_error(from_files, *labels)
    assert 0 < scores["within"] < 50  # one dev speaker: across is NaN on both sides
    np.testing.assert_equal(scores, abx_error(in_memory, *labels))
    unit_files = [torch.tensor(units[i.file][s:e]) for i, (s, e) in zip(items, spans, strict=True)]
    unit_memory = [representations.units[3][index[i.file]][s:e] for i, (s, e) in zip(items, spans, strict=True)]
    np.testing.assert_equal(
        abx_error(unit_files, *labels, distance="identical"), abx_error(unit_memory, *labels, distance="identical")
    )


def test_extract_evaluate_and_kmeans_see_the_same_audio_files_of_a_folder(tmp_path):
    """One definition: files with an audio suffix (any case, in subfolders), not transcripts, notes or hidden files."""
    from spidr_hf.evaluation.standard import draw_folder_audio
    from spidr_hf.evaluation.standard import find_audio as find_set_audio

    folder = tmp_path / "audio"
    write_audio(folder / "a.wav", speech_like(0.5, 0, SAMPLING_RATE), SAMPLING_RATE)
    write_audio(folder / "sub" / "b.FLAC", speech_like(0.5, 1, SAMPLING_RATE), SAMPLING_RATE)
    for name in ("a.wrd", "a.TextGrid", "sub/b.txt", "README", "features.pt", ".c.wav", "sub/.DS_Store"):
        (folder / name).write_bytes(b"not audio")
    assert [file.id for file in extract_module.find_audio(folder)] == ["a", "sub/b"]
    assert find_set_audio(folder, ["a", "b"]) == {"a": folder / "a.wav", "b": folder / "sub" / "b.FLAC"}
    assert len(draw_folder_audio(folder, max_seconds=10, seed=0)) == 2  # all decoded: no non-audio file drawn
