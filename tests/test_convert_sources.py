"""
`spidr-hf convert` from every place SpidR checkpoints are found: a URL (a server on 127.0.0.1), a Hugging Face Hub
repository or file in one (a pre-filled Hub cache, offline), a reference torch.hub name, and SpidR-Adapt checkpoints;
the SHA-256 of what was read recorded in the folder and its card.
"""

import hashlib
import inspect
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
import spidr.models.utils as reference_utils
import torch
from reference import build_reference, write_reference_checkpoint

from spidr_hf import SpidrForPreTraining
from spidr_hf.hub import checkpoint_sources
from spidr_hf.hub.checkpoint_sources import REFERENCE_HUB_NAMES, fetch_checkpoint
from spidr_hf.hub.convert import ConversionError, convert, read_conversion_record
from spidr_hf_cli import main as cli_main

AUDIO = torch.randn(1, 6000, generator=torch.Generator().manual_seed(1))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_model(reference, folder: Path) -> None:
    """The converted folder computes the reference model's layer results."""
    ours = SpidrForPreTraining.from_pretrained(folder).eval()
    with torch.no_grad():
        expected_results = reference.get_intermediate_outputs(AUDIO)
        actual_results = ours.spidr(AUDIO, output_layer_results=True).layer_results
        for expected, actual in zip(expected_results, actual_results, strict=True):
            assert (expected - actual).abs().max() <= 1e-4


@pytest.fixture
def reference_run(tmp_path):
    """A tiny reference SpidR and its training run folder (spidr.pt and the run's config.json)."""
    torch.manual_seed(0)
    model, config = build_reference("spidr")
    return model, write_reference_checkpoint(model, config, "spidr", tmp_path / "served" / "run")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty download cache for the test (downloads land in $XDG_CACHE_HOME/spidr-hf/downloads)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "spidr-hf" / "downloads"


class CountingHandler(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A file server on 127.0.0.1 over tmp_path/served; yields its base URL and the paths it was asked for."""
    requests: list[str] = []
    handler = partial(type("Handler", (CountingHandler,), {"requests": requests}), directory=str(tmp_path / "served"))
    (tmp_path / "served").mkdir(exist_ok=True)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_url_with_its_config_beside_converts_once_and_records_what_it_read(reference_run, server, cache, tmp_path):
    reference, checkpoint = reference_run
    base, requests = server
    url = f"{base}/run/spidr.pt"
    assert cli_main(["convert", url, str(tmp_path / "out")]) == 0
    assert_same_model(reference, tmp_path / "out")
    record = read_conversion_record(tmp_path / "out")
    assert record["checkpoint"] == {"origin": url, "sha256": sha256(checkpoint)}
    config = checkpoint.parent / "config.json"
    assert record["config"] == {"origin": f"{base}/run/config.json", "sha256": sha256(config)}
    assert record["assumed_config"] is None and record["format"] == "reference"
    card = (tmp_path / "out" / "README.md").read_text()
    assert sha256(checkpoint) in card and url in card
    # A second conversion reads the cached download
    assert convert(url, tmp_path / "again") == tmp_path / "again"
    assert requests.count("/run/spidr.pt") == 1
    assert read_conversion_record(tmp_path / "again")["checkpoint"]["sha256"] == sha256(checkpoint)


@pytest.mark.slow  # builds SpidR base to find that the checkpoint does not fit it
def test_a_url_without_config_needs_one_or_fits_the_base_configuration(reference_run, server, cache, tmp_path):
    reference, checkpoint = reference_run
    base, _ = server
    config = checkpoint.parent / "config.json"
    kept = config.rename(tmp_path / "run-config.json")
    url = f"{base}/run/spidr.pt"
    with pytest.raises(ConversionError, match=r"no config.json beside .*--config"):
        convert(url, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    convert(url, tmp_path / "out", config=kept)
    assert_same_model(reference, tmp_path / "out")
    record = read_conversion_record(tmp_path / "out")
    assert record["config"] == {"origin": str(kept.resolve()), "sha256": sha256(kept)}


def test_unreachable_urls_are_one_line_errors(server, cache, tmp_path, capsys):
    base, _ = server
    with pytest.raises(SystemExit):
        cli_main(["convert", f"{base}/missing.pt", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert "spidr-hf convert: error: Could not download" in error and "404" in error
    assert not (tmp_path / "out").exists() and not list(cache.rglob("*.pt"))


def fill_hub_cache(cache: Path, repo_id: str, commits: dict[str, dict[str, Path]], refs: dict[str, str]) -> None:
    """huggingface_hub's cache layout: blobs, snapshots/COMMIT/FILE links to them, refs/NAME holding a commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for commit, files in commits.items():
        for name, source in files.items():
            content = source.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(content)
            link = repo / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("../" * len(Path(name).parts)) / ".." / "blobs" / blob.name)
    for ref, commit in refs.items():
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache, offline (conftest sets HF_HUB_OFFLINE=1)."""
    folder = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))
    return folder


MAIN, V1 = "a" * 40, "b" * 40


def test_hub_repositories_and_files_in_them_through_the_hub_cache(reference_run, hub_cache, tmp_path):
    reference, checkpoint = reference_run
    torch.manual_seed(1)
    other, other_config = build_reference("spidr")
    older = write_reference_checkpoint(other, other_config, "spidr", tmp_path / "older")
    run = {"final.pt": checkpoint, "config.json": checkpoint.parent / "config.json"}
    fill_hub_cache(
        hub_cache,
        "org/spidr-run",
        {MAIN: run, V1: {"final.pt": older, "config.json": older.parent / "config.json"}},
        {"main": MAIN, "v1": V1},
    )
    convert("org/spidr-run", tmp_path / "repo")  # its one checkpoint
    assert_same_model(reference, tmp_path / "repo")
    record = read_conversion_record(tmp_path / "repo")
    assert record["checkpoint"] == {"origin": f"hf://org/spidr-run@{MAIN}/final.pt", "sha256": sha256(checkpoint)}
    assert record["config"]["origin"] == f"hf://org/spidr-run@{MAIN}/config.json"
    assert cli_main(["convert", "org/spidr-run/final.pt", str(tmp_path / "v1"), "--revision", "v1"]) == 0
    assert_same_model(other, tmp_path / "v1")
    assert read_conversion_record(tmp_path / "v1")["checkpoint"]["sha256"] == sha256(older)
    # The Hub's file URLs go through the Hub cache too
    convert(f"https://huggingface.co/org/spidr-run/resolve/{V1}/final.pt", tmp_path / "url")
    assert read_conversion_record(tmp_path / "url")["checkpoint"]["origin"] == f"hf://org/spidr-run@{V1}/final.pt"


@pytest.mark.slow  # builds SpidR base to find that the checkpoint does not fit it
def test_hub_sources_that_cannot_be_read_are_one_line_errors(reference_run, hub_cache, tmp_path):
    _, checkpoint = reference_run
    with pytest.raises(ConversionError, match=r"org/absent is not a file, and .* not in the Hugging Face cache"):
        convert("org/absent", tmp_path / "out")
    fill_hub_cache(hub_cache, "org/steps", {MAIN: {"step_1.pt": checkpoint, "step_2.pt": checkpoint}}, {"main": MAIN})
    with pytest.raises(ConversionError, match=r"several checkpoints: \['step_1.pt', 'step_2.pt'\]; name one"):
        convert("org/steps", tmp_path / "out")
    with pytest.raises(ConversionError, match="applies to Hugging Face Hub repositories"):
        convert(str(checkpoint), tmp_path / "out", revision="v1")
    # Offline, a config.json the cache knows nothing of is not guessed
    fill_hub_cache(hub_cache, "org/bare", {MAIN: {"final.pt": checkpoint}}, {"main": MAIN})
    with pytest.raises(ConversionError, match=r"config.json is not in the Hugging Face cache.*--config"):
        convert("org/bare", tmp_path / "out")
    # ... unless the cache knows there is none (huggingface_hub records the files a repository lacks)
    no_exist = hub_cache / "models--org--bare" / ".no_exist" / MAIN / "config.json"
    no_exist.parent.mkdir(parents=True)
    no_exist.touch()
    with pytest.raises(ConversionError, match=r"no config\.json beside"):  # the base configuration does not fit
        convert("org/bare", tmp_path / "out")
    convert("org/bare", tmp_path / "out", config=checkpoint.parent / "config.json")
    assert not list(tmp_path.glob(".out*"))


def test_reference_hub_names_are_the_references(server, cache, tmp_path, monkeypatch):
    """The names and URLs are those of the reference's torch.hub functions; a name downloads its URL and stands
    for the base model of its type (the reference's hub functions read no config.json)."""
    for name, entry in REFERENCE_HUB_NAMES.items():
        assert entry.url in inspect.getsource(getattr(reference_utils, name))
    base, requests = server
    (tmp_path / "served" / "models").mkdir()
    torch.save({"model": {}}, tmp_path / "served" / "models" / "spidr_base.pt")
    (tmp_path / "served" / "models" / "config.json").write_text("{}")
    entry = REFERENCE_HUB_NAMES["spidr_base"]
    monkeypatch.setitem(
        checkpoint_sources.REFERENCE_HUB_NAMES, "spidr_base", type(entry)(f"{base}/models/spidr_base.pt", "spidr", "x")
    )
    fetched = fetch_checkpoint("spidr_base")
    assert fetched.path.read_bytes() == (tmp_path / "served" / "models" / "spidr_base.pt").read_bytes()
    assert (fetched.model_type, fetched.config, requests) == ("spidr", None, ["/models/spidr_base.pt"])
    # Its URL is the same model (the cached download)
    by_url = fetch_checkpoint(f"{base}/models/spidr_base.pt")
    assert (by_url.path, by_url.model_type, by_url.official, len(requests)) == (fetched.path, "spidr", "x", 1)


def spidr_adapt_checkpoint(reference, config, folder: Path) -> Path:
    """A SpidR-Adapt run as facebookresearch/spidr-adapt writes it (checkpoint.py, train.py): the SpidR weights plus
    the supervised phone classifiers, the training state with `supervised_epoch`, and the run's config.json with
    its extra model fields and the `spidr_reset` model type (SpidRWithReset)."""
    import dataclasses

    folder.mkdir(parents=True)
    hidden = config.encoder_embed_dim
    state = dict(reference.state_dict())
    state["supervised_classifiers.de.layers.0.weight"] = torch.randn(hidden, hidden)
    state["supervised_classifiers.de.layers.0.bias"] = torch.randn(hidden)
    state["supervised_classifiers.de.output_layer.weight"] = torch.randn(40, hidden)
    state["supervised_classifiers.de.output_layer.bias"] = torch.randn(40)
    step = torch.tensor([200_000])
    checkpoint = {
        "model": {f"module.{key}": value for key, value in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "scheduler": {"last_epoch": 200_000},
        "scaler": {"scale": 65536.0},
        "epoch": torch.tensor([3]),
        "supervised_epoch": torch.tensor([1]),
        "step": step,
    }
    torch.save(checkpoint, folder / "step_200000.pt")
    model = dataclasses.asdict(config) | {
        "supervised_every_step": 5,
        "supervised_layer": 3,
        "num_supervised_layers": 2,
        "supervised_languages": ["de"],
        "adapt_heads": True,
    }
    run = {"run": {"model_type": "spidr_reset", "init_ckpt": None}, "model": model, "masking": {"mask_prob": 0.8}}
    (folder / "config.json").write_text(json.dumps(run))
    return folder / "step_200000.pt"


def test_spidr_adapt_checkpoints_convert_without_their_training_extras(tmp_path, capsys):
    torch.manual_seed(0)
    reference, config = build_reference("spidr")
    checkpoint = spidr_adapt_checkpoint(reference, config, tmp_path / "adapt")
    assert cli_main(["convert", str(checkpoint), str(tmp_path / "out")]) == 0
    assert "Left out (spidr-adapt" in capsys.readouterr().out
    assert_same_model(reference, tmp_path / "out")
    record = read_conversion_record(tmp_path / "out")
    assert record["format"] == "spidr-adapt" and record["objective"] == "spidr"
    assert record["dropped"]["config_fields"] == sorted(
        ["supervised_every_step", "supervised_layer", "num_supervised_layers", "supervised_languages", "adapt_heads"]
    )
    assert {name.rsplit(".", 2)[0] for name in record["dropped"]["weights"]} == {
        "supervised_classifiers.de.layers",
        "supervised_classifiers.de",
    }
    assert "supervised_epoch" in record["dropped"]["checkpoint_entries"]
    assert "`supervised_classifiers.de.*`" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.slow  # push checks the release folder in a fresh interpreter
def test_push_of_a_converted_folder_names_what_was_converted(reference_run, tmp_path):
    _, checkpoint = reference_run
    convert(checkpoint, tmp_path / "converted")
    release = tmp_path / "release"
    push = ["push", str(tmp_path / "converted"), "--repo-id", "org/run", "--license", "cc-by-nc-4.0"]
    assert cli_main([*push, "--dry-run", str(release)]) == 0
    text = " ".join((release / "README.md").read_text().split())
    assert "converted to Hugging Face Transformers with `spidr-hf` from `spidr.pt`" in text
    for read in (checkpoint, checkpoint.parent / "config.json"):
        assert f"SHA-256 `{sha256(read)}`" in text
    assert str(tmp_path) not in text  # the local folder is the user's business
