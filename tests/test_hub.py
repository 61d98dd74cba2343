"""`spidr-hf push`: the release folder, its loading without spidr_hf, the model card, and the upload calls."""

import http.server
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx2
import huggingface_hub
import numpy as np
import pytest
import torch
from conftest import SAVED_AUTO_MAP, TINY_CONFIG
from huggingface_hub import CommitInfo, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file
from torchcodec.encoders import AudioEncoder

from spidr_hf import (
    SpidrConfig,
    SpidrFeatureExtractor,
    SpidrFeaturesPipeline,
    SpidrForPreTraining,
    SpidrUnitsPipeline,
)
from spidr_hf.evaluation.schema import EvaluationReport
from spidr_hf.hub import push as push_module
from spidr_hf.hub.model_card import CardOptions, official_checkpoints, render_model_card
from spidr_hf.hub.release import check_release_folder, load_source
from spidr_hf_cli import main

REPO_ID = "me/tiny-spidr"
RELEASE_FILES = {
    "README.md",
    "config.json",
    "configuration_spidr.py",
    "feature_extraction_spidr.py",
    "model.safetensors",
    "modeling_spidr.py",
    "pipeline_spidr.py",
    "preprocessor_config.json",
}
# Run first in every clean subprocess: whatever the install (editable or not), `import spidr_hf` fails
HIDE_SPIDR_HF = textwrap.dedent(
    """
    import importlib.abc, sys

    class HideSpidrHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "spidr_hf":
                raise ModuleNotFoundError(name)

    sys.meta_path.insert(0, HideSpidrHf())
    try:
        import spidr_hf
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("spidr_hf is still importable")
    """
)
EVALUATION = {
    "model": "tiny",
    "dataset": "spidr-hf-corpus",
    "split": "dev",
    "num_abx_tokens": 1234,
    "results": [
        {"system": "model", "representation": "layer_results", "layer": 3, "metric": "abx_within", "value": 7.125},
        {"system": "model", "representation": "layer_results", "layer": 3, "metric": "abx_across", "value": 9.5},
        {"system": "model", "representation": "codebook", "layer": 3, "metric": "pnmi", "value": 0.4321},
        {"system": "model", "representation": "codebook", "layer": 3, "metric": "bitrate", "value": 210.4},
        {"system": "random_init", "representation": "layer_results", "layer": 3, "metric": "abx_within", "value": 31.5},
        {"system": "log_mel", "representation": "log_mel", "layer": None, "metric": "abx_within", "value": 21.25},
    ],
}


def speech(seconds: float, rate: int = 16000) -> np.ndarray:
    time = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal(time.size)
    return (0.4 * np.sin(2 * np.pi * (150 + 80 * time) * time) + 0.05 * noise).astype(np.float32)


def serve_from_hub_cache(folder: Path, cache: Path) -> None:
    """Lay `folder` out in a Hub cache as the main revision of REPO_ID, so that offline loads of the id find it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = cache / f"models--{REPO_ID.replace('/', '--')}"
    shutil.copytree(folder, repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)


def run_clean_python(code: str, cwd: Path, **environment: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh isolated interpreter that cannot import spidr_hf; offline, with a fresh code cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "modules"), **environment}
    return subprocess.run(
        [sys.executable, "-I", "-c", HIDE_SPIDR_HF + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def evaluation_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("evaluation") / "results.json"
    path.write_text(json.dumps(EVALUATION))
    return path


def push_arguments(source_dir: Path, *extra: str) -> list[str]:
    return ["push", str(source_dir), "--repo-id", REPO_ID, "--license", "cc-by-4.0", *extra]


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory, source_dir, evaluation_path) -> Path:
    out = tmp_path_factory.mktemp("release") / "out"
    extra = ["--dataset", "openslr/librispeech_asr", "--base-model", "me/base", "--evaluation", str(evaluation_path)]
    assert main([*push_arguments(source_dir, *extra), "--dry-run", str(out)]) == 0
    return out


@pytest.mark.slow
def test_dry_run_writes_the_release_folder(release_dir, source_dir):
    assert {p.name for p in release_dir.iterdir()} == RELEASE_FILES
    config = json.loads((release_dir / "config.json").read_text())
    assert config["auto_map"] == SAVED_AUTO_MAP
    assert config["custom_pipelines"] == {
        "spidr-features": {"impl": "pipeline_spidr.SpidrFeaturesPipeline", "pt": ["AutoModel"]},
        "spidr-units": {"impl": "pipeline_spidr.SpidrUnitsPipeline", "pt": ["AutoModelForPreTraining"]},
    }
    preprocessor = json.loads((release_dir / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_spidr.SpidrFeatureExtractor"}
    released, source = load_file(release_dir / "model.safetensors"), load_file(source_dir / "model.safetensors")
    assert released.keys() == source.keys()
    assert all(torch.equal(released[k], source[k]) for k in source)
    assert (release_dir / "pipeline_spidr.py").read_text() == Path(inspect.getfile(SpidrFeaturesPipeline)).read_text()


@pytest.mark.slow
def test_dry_run_with_paths_relative_to_the_working_folder(source_dir, tmp_path, monkeypatch):
    """As the quickstart runs it (`spidr-hf push runs/quickstart/model ... --dry-run runs/quickstart/release`): the
    check in a fresh interpreter runs elsewhere, where those paths mean nothing."""
    shutil.copytree(source_dir, tmp_path / "runs" / "model")
    monkeypatch.chdir(tmp_path)
    assert main([*push_arguments(Path("runs/model")), "--dry-run", "runs/release"]) == 0
    assert (tmp_path / "runs" / "release" / "model.safetensors").is_file()


@pytest.mark.slow
def test_dry_run_refuses_a_used_folder(source_dir, release_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*push_arguments(source_dir), "--dry-run", str(release_dir)])
    assert exit_info.value.code == 2
    assert "not an empty folder" in capsys.readouterr().err


@pytest.mark.slow
def test_release_loads_through_pipelines_without_spidr_hf(release_dir, tmp_path):
    folder = shutil.copytree(release_dir, tmp_path / "copied-release")
    AudioEncoder(torch.from_numpy(speech(2.0))[None], sample_rate=16000).to_file(tmp_path / "speech.wav")
    np.save(tmp_path / "audio_8k.npy", speech(1.5, rate=8000))
    result = run_clean_python(
        f"""
        import numpy as np
        from transformers import AutoFeatureExtractor, AutoModel, pipeline

        folder = {str(folder)!r}
        features = pipeline("spidr-features", model=folder, trust_remote_code=True, device="cpu")
        units = pipeline("spidr-units", model=folder, trust_remote_code=True, device="cpu")
        loaded = [
            features, units, features.model, units.model, features.feature_extractor,
            AutoModel.from_pretrained(folder, trust_remote_code=True),
            AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True),
        ]
        for obj in loaded:
            assert type(obj).__module__.startswith("transformers_modules."), type(obj)
        audio_8k = np.load("audio_8k.npy")
        np.savez(
            "out.npz",
            file_features=features("speech.wav", layer=3)["features"],
            resampled_features=features(audio_8k, sampling_rate=8000, layer=4)["features"],
            units=units("speech.wav", layer=4, deduplicate=True)["units"],
        )
        assert not [m for m in sys.modules if m.split(".")[0] == "spidr_hf"]
        print(type(features).__name__, type(units.model).__name__)
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["SpidrFeaturesPipeline", "SpidrForPreTraining"]
    # the same numbers as this package's own pipelines on the source model
    model, feature_extractor = load_source(release_dir)
    features = SpidrFeaturesPipeline(model=model, feature_extractor=feature_extractor, device="cpu")
    units = SpidrUnitsPipeline(model=model, feature_extractor=feature_extractor, device="cpu")
    released = np.load(tmp_path / "out.npz")
    speech_path = str(tmp_path / "speech.wav")
    np.testing.assert_allclose(released["file_features"], features(speech_path, layer=3)["features"], atol=1e-6)
    resampled = features(speech(1.5, rate=8000), sampling_rate=8000, layer=4)["features"]
    np.testing.assert_allclose(released["resampled_features"], resampled, atol=1e-6)
    np.testing.assert_array_equal(released["units"], units(speech_path, layer=4, deduplicate=True)["units"])


@pytest.mark.slow
def test_card_metadata(release_dir):
    card = ModelCard.load(release_dir / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "feature-extraction"
    assert data.license == "cc-by-4.0"
    assert data.datasets == ["openslr/librispeech_asr"]
    assert data.base_model == "me/base"
    assert {"speech", "audio", "self-supervised-learning", "spidr"} <= set(data.tags)
    # model-index: the model's own ABX and PNMI figures only, not the baselines nor the other metrics
    indexed = {(r.metric_type, r.metric_value, r.dataset_name, r.dataset_split) for r in data.eval_results}
    assert indexed == {
        ("abx_within", 7.125, "spidr-hf-corpus", "dev"),
        ("abx_across", 9.5, "spidr-hf-corpus", "dev"),
        ("pnmi", 0.4321, "spidr-hf-corpus", "dev"),
    }
    assert data.model_name == REPO_ID
    # the table shows everything, baselines included
    assert "| random_init | layer_results | 3 | 31.50 |" in card.text
    assert "| log_mel | log_mel | - | 21.25 |" in card.text
    assert "| model | codebook | 3 | - | - | 0.432 | 210.4 |" in card.text
    assert "1234 ABX tokens" in card.text


@pytest.mark.slow
def test_card_snippets_run(release_dir, tmp_path):
    """Each Python block of the card, verbatim, against the repository id served from an offline Hub cache."""
    snippets = re.findall(r"```python\n(.*?)```", (release_dir / "README.md").read_text(), flags=re.DOTALL)
    assert len(snippets) == 4 and all(f'"{REPO_ID}"' in s for s in snippets)
    serve_from_hub_cache(release_dir, tmp_path / "hub")
    AudioEncoder(torch.from_numpy(speech(3.0))[None], sample_rate=16000).to_file(tmp_path / "speech.wav")
    code = "\n".join(f"exec({snippet!r}, {{}})\nprint('--- snippet done')" for snippet in snippets)
    result = run_clean_python(code, cwd=tmp_path, HF_HUB_CACHE=str(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("--- snippet done") == 4
    assert "(149, 64)" in result.stdout  # 3 s of audio: 149 frames of 64 features


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("spidr-base", SpidrConfig()),
        ("dinosr-base-reproduced", SpidrConfig.dinosr_base()),
        ("dinosr-original", SpidrConfig.dinosr_base(qkv_bias=True)),
    ],
)
def test_official_cards(tmp_path, name, config):
    entry = official_checkpoints()[name]
    render_model_card(config, CardOptions(repo_id="org/" + name, official=name)).save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    # Meta released SpidR base and the reproduced DinoSR under CC BY-NC 4.0; the original DinoSR terms are its authors'
    assert card.data.license == ("other" if name == "dinosr-original" else "cc-by-nc-4.0")
    assert card.data.datasets == ["openslr/librispeech_asr"]
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "feature-extraction"
    assert card.data.tags[-1] == config.objective
    text = card.text
    assert f"<{entry['source']}>" in text
    assert entry["license_note"] in text
    assert ("CC BY-NC 4.0" in text) == (name != "dinosr-original")
    assert "16 kHz mono" in text and "standardized" in text
    assert "arXiv 2512.20308" in text and "poli2025spidr" in text
    assert ("liu2023dinosr" in text) == (config.objective == "dinosr")
    assert "on read English speech (LibriSpeech)" in " ".join(text.split())
    assert f"layer={entry['layer']}" in text
    for row in entry["published"]:
        assert f"| {row['units']} | {row['abx_within']:.2f} | {row['abx_across']:.2f} | {row['pnmi']:.3f} |" in text


def test_card_tells_of_stored_kmeans_centroids(tmp_path):
    options = {"repo_id": REPO_ID, "license": "mit"}
    plain = render_model_card(SpidrConfig(**TINY_CONFIG), CardOptions(**options)).text
    assert 'units="kmeans"' not in plain and "k-means centroids" not in plain
    assert "LibriSpeech" not in plain  # a model trained with spidr-hf says what it was trained on, or nothing
    with_data = render_model_card(SpidrConfig(**TINY_CONFIG), CardOptions(**options, datasets=("me/speech",))).text
    assert "Pretrained without labels on me/speech;" in with_data
    evaluation = tmp_path / "results.json"
    evaluation.write_text(json.dumps({**EVALUATION, "stored_kmeans_layer": 3}))
    config = SpidrConfig(**TINY_CONFIG, kmeans_layer=3, kmeans_num_clusters=8)
    text = render_model_card(config, CardOptions(**options, evaluation=evaluation)).text
    words = " ".join(text.split())
    assert "stores 8 k-means centroids of the layer-3 layer results" in words
    snippet = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)[2]
    assert f'pipeline("spidr-units", model="{REPO_ID}"' in snippet and 'units="kmeans"' in snippet
    assert "k-means units of layer 3 are those of its stored centroids" in words
    assert "\n\n\n" not in text.split("## Limitations")[0] and "\n\n\n" not in plain.split("## Limitations")[0]
    # A report of stored centroids the model does not have is another model's: the card would claim what is not so
    for other in (SpidrConfig(**TINY_CONFIG), SpidrConfig(**TINY_CONFIG, kmeans_layer=4, kmeans_num_clusters=8)):
        with pytest.raises(ValueError, match="scored stored k-means centroids of layer 3, but this model stores"):
            render_model_card(other, CardOptions(**options, evaluation=evaluation))


def test_official_card_must_fit_the_model():
    with pytest.raises(ValueError, match="not the spidr-base checkpoint: objective='dinosr'"):
        render_model_card(SpidrConfig.dinosr_base(), CardOptions(repo_id=REPO_ID, official="spidr-base"))
    with pytest.raises(ValueError, match="qkv_bias=False"):
        render_model_card(SpidrConfig.dinosr_base(), CardOptions(repo_id=REPO_ID, official="dinosr-original"))
    with pytest.raises(ValueError, match=r"spidr-base weights are cc-by-nc-4\.0, not mit"):
        render_model_card(SpidrConfig(), CardOptions(repo_id=REPO_ID, official="spidr-base", license="mit"))


def test_card_needs_a_license():
    with pytest.raises(ValueError, match="--license"):
        render_model_card(SpidrConfig(**TINY_CONFIG), CardOptions(repo_id=REPO_ID))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda e: e.pop("num_abx_tokens"), "missing 'num_abx_tokens'"),
        (lambda e: e.update(num_abx_tokens="1234"), "'num_abx_tokens' must be an integer"),
        (lambda e: e["results"][4].pop("layer"), r"results\[4\]: missing 'layer'"),
        (lambda e: e["results"].append([]), r"results\[6\] must be a JSON object"),
        (lambda e: e["results"][0].update(metric="wer"), r"results\[0\]: 'metric' must be one of"),
        (lambda e: e["results"][1].update(system="hubert"), r"results\[1\]: 'system'"),
        (lambda e: e["results"][2].update(value="0.4"), r"results\[2\]: 'value' must be a finite number"),
        (lambda e: e["results"][2].update(value=float("nan")), r"results\[2\]: 'value' must be a finite number"),
        (lambda e: e["results"][3].update(layer="6"), r"results\[3\]: 'layer'"),
        (lambda e: e.update(stored_kmeans_layer="6"), "'stored_kmeans_layer' must be an integer or null"),
    ],
)
def test_bad_evaluation_json(tmp_path, change, match):
    evaluation = json.loads(json.dumps(EVALUATION))
    change(evaluation)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(evaluation))
    with pytest.raises(ValueError, match=match) as error:
        EvaluationReport.load(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_evaluation_json_round_trip(evaluation_path, tmp_path):
    """
    A report read from results.json writes the same JSON back, and the card's table reads it in file order. A report
    written before `stored_kmeans_layer` existed reads as one without stored k-means centroids.
    """
    report = EvaluationReport.load(evaluation_path)
    assert report.results[5].layer is None and report.results[2].value == 0.4321
    assert "stored_kmeans_layer" not in EVALUATION and report.stored_kmeans_layer is None
    report.dump(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text()) == {**EVALUATION, "stored_kmeans_layer": None}
    assert list(report.table()) == [
        ("model", "layer_results", 3),
        ("model", "codebook", 3),
        ("random_init", "layer_results", 3),
        ("log_mel", "log_mel", None),
    ]
    assert report.metrics() == ["abx_within", "abx_across", "pnmi", "bitrate"]


def test_source_must_be_a_full_spidr_model(tmp_path):
    torch.manual_seed(0)
    SpidrForPreTraining(SpidrConfig(**TINY_CONFIG)).spidr.save_pretrained(tmp_path / "student")
    with pytest.raises(ValueError, match=r"lacks \d+ weights of the full model"):
        load_source(tmp_path / "student")
    with pytest.raises(ValueError, match="not a saved model folder"):
        load_source(tmp_path)


@pytest.mark.slow
def test_release_check_catches_broken_folders(release_dir, tmp_path):
    model, feature_extractor = load_source(release_dir)
    no_pipelines = shutil.copytree(release_dir, tmp_path / "no-pipelines")
    (no_pipelines / "pipeline_spidr.py").unlink()
    with pytest.raises(ValueError, match="does not load without spidr_hf"):
        check_release_folder(no_pipelines, model, feature_extractor, layer=3)
    other_weights = shutil.copytree(release_dir, tmp_path / "other-weights")
    state = load_file(other_weights / "model.safetensors")
    torch.manual_seed(1)
    state["spidr.encoder.layers.0.feed_forward.output_dense.weight"] += 0.01 * torch.randn(64, 128)
    huggingface_hub.save_torch_state_dict(state, other_weights)
    with pytest.raises(ValueError, match="other features than the source model"):
        check_release_folder(other_weights, model, feature_extractor, layer=3)


class RecordingHfApi:
    """Stands for `HfApi`: records the calls (checked against HfApi's real signatures) and the uploaded files."""

    instances: list["RecordingHfApi"] = []

    def __init__(self, token: str | None = None, fail_on: str | None = None):
        self.token, self.fail_on, self.calls, self.uploaded = token, fail_on, [], {}
        RecordingHfApi.instances.append(self)

    def _record(self, method: str, *args, **kwargs) -> None:
        bound = inspect.signature(getattr(HfApi, method)).bind(self, *args, **kwargs)
        self.calls.append((method, {k: v for k, v in bound.arguments.items() if k != "self"}))
        if method == self.fail_on:
            request = httpx2.Request("POST", f"https://huggingface.co/api/{method}")
            raise HfHubHTTPError("500 Server Error: boom", response=httpx2.Response(500, request=request))

    def whoami(self, *args, **kwargs) -> dict:
        self._record("whoami", *args, **kwargs)
        return {"name": "me"}

    def create_repo(self, *args, **kwargs) -> None:
        self._record("create_repo", *args, **kwargs)

    def create_branch(self, *args, **kwargs) -> None:
        self._record("create_branch", *args, **kwargs)

    def upload_folder(self, *args, **kwargs) -> CommitInfo:
        self._record("upload_folder", *args, **kwargs)
        folder = Path(self.calls[-1][1]["folder_path"])
        self.uploaded = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        create_pr = self.calls[-1][1].get("create_pr")
        return CommitInfo(
            commit_url=f"https://huggingface.co/{REPO_ID}/commit/{'a' * 40}",
            commit_message=kwargs.get("commit_message", ""),
            commit_description="",
            oid="a" * 40,
            pr_url=f"https://huggingface.co/{REPO_ID}/discussions/7" if create_pr else None,
        )


@pytest.fixture
def recording_api(monkeypatch) -> Iterator[type[RecordingHfApi]]:
    RecordingHfApi.instances = []
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(push_module, "HfApi", RecordingHfApi)
    yield RecordingHfApi


@pytest.mark.slow
def test_push_uploads_the_checked_folder(source_dir, release_dir, recording_api, capsys):
    assert main([*push_arguments(source_dir), "--private", "--revision", "v1"]) == 0
    (api,) = recording_api.instances
    assert api.token == "hf_test_token"
    assert [name for name, _ in api.calls] == ["whoami", "create_repo", "create_branch", "upload_folder"]
    assert api.calls[1][1] == {"repo_id": REPO_ID, "private": True, "exist_ok": True, "repo_type": "model"}
    assert api.calls[2][1] == {"repo_id": REPO_ID, "branch": "v1", "exist_ok": True, "repo_type": "model"}
    upload = api.calls[3][1]
    assert {k: v for k, v in upload.items() if k != "folder_path"} == {
        "repo_id": REPO_ID,
        "revision": "v1",
        "create_pr": False,
        "repo_type": "model",
        "commit_message": "Upload SpidR model with spidr-hf",
    }
    assert set(api.uploaded) == RELEASE_FILES
    for name in RELEASE_FILES - {"README.md"}:  # the same files as the dry run (whose card has more options)
        assert api.uploaded[name] == (release_dir / name).read_bytes(), name
    assert not Path(upload["folder_path"]).exists()  # the staging folder is cleaned up
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(f"Uploaded {REPO_ID}: https://huggingface.co/{REPO_ID}/commit/{'a' * 40}")
    )


@pytest.mark.slow
def test_push_as_pull_request(release_dir, recording_api):
    api = recording_api()
    commit = push_module.upload_release(api, release_dir, REPO_ID, private=False, revision=None, create_pr=True)
    assert commit.pr_url == f"https://huggingface.co/{REPO_ID}/discussions/7"
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    # None: the account's default
    assert api.calls[0][1] == {"repo_id": REPO_ID, "private": None, "exist_ok": True, "repo_type": "model"}
    assert api.calls[1][1]["create_pr"] is True and api.calls[1][1]["revision"] is None


@pytest.mark.slow
def test_failed_upload_is_not_reported_done(source_dir, recording_api, monkeypatch, capsys):
    monkeypatch.setattr(push_module, "HfApi", partial(RecordingHfApi, fail_on="upload_folder"))
    with pytest.raises(SystemExit) as exit_info:
        main(push_arguments(source_dir))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert "Uploaded" not in out
    assert f"Uploading to {REPO_ID} failed: 500 Server Error: boom; nothing was committed to {REPO_ID}." in err
    assert [name for name, _ in recording_api.instances[0].calls] == ["whoami", "create_repo", "upload_folder"]


@pytest.mark.slow
def test_failed_repository_creation(release_dir, recording_api):
    api = recording_api(fail_on="create_repo")
    with pytest.raises(push_module.PushError, match=f"Creating the repository {REPO_ID} failed.*nothing was uploaded"):
        push_module.upload_release(api, release_dir, REPO_ID, private=False, revision=None, create_pr=False)
    assert [name for name, _ in api.calls] == ["create_repo"]


@pytest.mark.parametrize("repo_id", ["bad id", "just-a-name", "org/na--me", "a/b/c"])
def test_bad_repo_id_fails_before_anything(source_dir, recording_api, repo_id, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(source_dir), "--repo-id", repo_id, "--license", "mit"])
    assert exit_info.value.code == 2
    assert "--repo-id" in capsys.readouterr().err
    assert recording_api.instances == []


def test_missing_token_fails_before_anything(source_dir, recording_api, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(SystemExit) as exit_info:
        main(push_arguments(source_dir))
    assert exit_info.value.code == 2
    assert "No Hugging Face token: run `hf auth login` or set HF_TOKEN" in capsys.readouterr().err
    assert recording_api.instances == []


@pytest.fixture
def hub_that_rejects_tokens() -> Iterator[str]:
    """A local HTTP server answering every request like the Hub does for an invalid token."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"error": "Invalid credentials in Authorization header"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [("rejecting", "Invalid user token"), ("http://127.0.0.1:9", "Connection refused")],  # a 401 server; a closed port
)
def test_network_and_token_failures_with_the_real_client(
    source_dir, monkeypatch, capsys, hub_that_rejects_tokens, endpoint, reason
):
    endpoint = hub_that_rejects_tokens if endpoint == "rejecting" else endpoint
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # talk to the local endpoint only
    monkeypatch.setenv("HF_TOKEN", "hf_invalid")
    monkeypatch.setattr(push_module, "HfApi", partial(HfApi, endpoint=endpoint))
    with pytest.raises(SystemExit) as exit_info:
        main(push_arguments(source_dir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("spidr-hf push: error: Checking the Hugging Face token failed: ")
    assert reason in err and err.strip().endswith("nothing was uploaded.")


def finetuned_folder(source_dir: Path, folder: Path, head: str) -> Path:
    """A fine-tuned folder as `training/finetune.py` writes it: the head's weights, the processor, the figures."""
    from transformers import Wav2Vec2PhonemeCTCTokenizer

    from spidr_hf import SpidrForCTC, SpidrForSequenceClassification

    torch.manual_seed(0)
    if head == "ctc":
        folder.mkdir(parents=True)
        (folder / "vocab.json").write_text(json.dumps({"<pad>": 0, "<unk>": 1, "aa": 2, "b": 3, "ch": 4}))
        tokenizer = Wav2Vec2PhonemeCTCTokenizer(
            str(folder / "vocab.json"), do_phonemize=False, bos_token=None, eos_token=None
        )
        model = SpidrForCTC.from_pretrained(source_dir, vocab_size=len(tokenizer), pad_token_id=0)
        tokenizer.save_pretrained(folder)
        (folder / "eval_results.json").write_text(json.dumps({"eval_per": 0.4375, "eval_runtime": 1.5}))
    else:
        speakers = {0: "awb", 1: "slt", 2: "rms"}
        model = SpidrForSequenceClassification.from_pretrained(
            source_dir, num_labels=3, id2label=speakers, label2id={name: i for i, name in speakers.items()}
        )
        (folder / "eval_results.json").parent.mkdir(parents=True, exist_ok=True)
        (folder / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.75}))
    model.save_pretrained(folder)
    SpidrFeatureExtractor().save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("head", ["ctc", "speakers"])
def test_push_publishes_a_fine_tuned_folder_with_its_processor_and_task_card(source_dir, tmp_path, head):
    source = finetuned_folder(source_dir, tmp_path / "finetuned", head)
    out = tmp_path / "release"
    assert main([*push_arguments(source, "--base-model", "me/base"), "--dry-run", str(out)]) == 0
    files = {path.name for path in out.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "modeling_spidr.py", "preprocessor_config.json"} <= files
    if head == "ctc":
        assert {"vocab.json", "tokenizer_config.json"} <= files
    assert not [name for name in files if name.startswith(".")]  # the check's scratch went with the staging folder
    card = ModelCard.load(out / "README.md")
    task = "automatic-speech-recognition" if head == "ctc" else "audio-classification"
    assert card.data.pipeline_tag == task and card.data.base_model == "me/base"
    assert f'pipeline("{task}", model="{REPO_ID}", trust_remote_code=True)' in card.text
    assert ("| per | 0.4375 |" in card.text) == (head == "ctc") and "runtime" not in card.text
    assert ("awb, slt, rms" in card.text) == (head != "ctc")
    config = json.loads((out / "config.json").read_text())
    assert list(config["custom_pipelines"]) == ["spidr-features"]  # no units pipeline without codebook heads
    # The card's usage runs, verbatim, against the repository id served from an offline Hub cache
    snippet = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)[0]
    serve_from_hub_cache(out, tmp_path / "hub")
    AudioEncoder(torch.from_numpy(speech(2.0))[None], sample_rate=16000).to_file(tmp_path / "speech.wav")
    result = run_clean_python(snippet, cwd=tmp_path, HF_HUB_CACHE=str(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().splitlines()[-1]
    if head == "ctc":
        assert set(printed.split()) <= {"aa", "b", "ch", "<unk>"}  # phones of the vocabulary, or nothing
    else:
        assert "'label': 'awb'" in printed or "'label': 'slt'" in printed or "'label': 'rms'" in printed


def test_a_release_folder_that_fails_its_check_never_appears_and_leaves_nothing(source_dir, tmp_path, monkeypatch):
    from spidr_hf.hub import release

    def broken_check(*args, **kwargs):
        raise ValueError("the folder gives other units than the source model")

    monkeypatch.setattr(release, "check_release_folder", broken_check)
    out = tmp_path / "parent" / "release"
    with pytest.raises(ValueError, match="other units"):
        main([*push_arguments(source_dir), "--dry-run", str(out)])
    assert not out.exists() and list(out.parent.iterdir()) == []  # no folder, no hidden staging left
    # A staging folder that a killed run left (unlocked) is removed by the next run; a live one's is not touched
    abandoned = out.parent / ".release.staging-killed"
    abandoned.mkdir()
    (abandoned / "model.safetensors").write_text("half written")
    monkeypatch.undo()
    assert main([*push_arguments(source_dir), "--dry-run", str(out)]) == 0
    assert sorted(path.name for path in out.parent.iterdir()) == ["release"]


def running_release_check(pid: int) -> bool:
    """Whether `pid` is a live release check (not gone, not a zombie, not another process that got its id since)."""
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()  # a zombie's is empty
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"release_check.py" in command_line


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 300) -> None:
    """Poll until `condition()`: the deadline only bounds a hang (a loaded machine takes as long as it takes)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {seconds} s"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the child dies with push on Linux (PR_SET_PDEATHSIG)")
def test_a_killed_push_leaves_no_child_and_the_next_run_no_staging(source_dir, tmp_path):
    from spidr_hf.hub.release_check import PID_FILE

    out = tmp_path / "parent" / "release"
    command = [sys.executable, "-m", "spidr_hf", *push_arguments(source_dir), "--dry-run", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "push.err", "w") as push_errors:
        push = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=push_errors)
    check = None

    def pid_files() -> list[Path]:
        return list(out.parent.glob(f".release.staging-*/.spidr-release-check-*/{PID_FILE}"))

    try:
        # The check writes its pid file once its interpreter runs, with the death signal already set (before exec)
        wait_for(lambda: pid_files() or push.poll() is not None, "the release check never started")
        assert push.poll() is None, f"push ended ({push.returncode}) first: {(tmp_path / 'push.err').read_text()}"
        check = int(pid_files()[0].read_text())
        # Stopped, neither can finish before the kill (push waits for its check); SIGKILL ends a stopped process too
        os.kill(check, signal.SIGSTOP)
        assert running_release_check(check) and push.poll() is None
        push.kill()
        push.wait()
        wait_for(lambda: not running_release_check(check), "the check's child outlived the killed push", seconds=120)
    finally:
        push.kill()
        if check is not None and running_release_check(check):
            os.kill(check, signal.SIGKILL)  # a failed test leaves no stray process
    assert not out.exists()
    assert main([*push_arguments(source_dir), "--dry-run", str(out)]) == 0
    assert sorted(path.name for path in out.parent.iterdir()) == ["release"]
