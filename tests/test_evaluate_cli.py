"""`spidr-hf evaluate` end to end on a tiny flite corpus with a tiny random model, plus its bad-input errors."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from datasets import load_from_disk

from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining, SpidrModel
from spidr_hf.data.corpus import build_corpus
from spidr_hf.evaluation import evaluate_model, log_mel
from spidr_hf.evaluation.items import num_frames
from spidr_hf.evaluation.report import compare_to_initialisation, format_comparison
from spidr_hf.evaluation.schema import EvaluationReport, EvaluationResult
from spidr_hf.model.representations import ModelRepresentations
from spidr_hf_cli import main
from spidr_hf_cli.arguments import parse_layers

SYSTEMS = {"model", "random_init", "log_mel"}
REPRESENTATIONS = {"layer_results", "codebook", "kmeans", "log_mel"}
METRICS = {
    "abx_within",
    "abx_across",
    "pnmi",
    "phone_purity",
    "cluster_purity",
    "codebook_perplexity",
    "active_codewords",
    "bitrate",
}


def tiny_config(**kwargs) -> SpidrConfig:
    return SpidrConfig(
        num_hidden_layers=4,
        num_codebooks=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        num_conv_pos_embedding_groups=4,
        codebook_size=16,
        **kwargs,
    )


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """Three speakers, two of them in dev so that across-speaker ABX exists."""
    out_dir = tmp_path_factory.mktemp("corpus")
    build_corpus(out_dir, hours=0.02, num_speakers=3, dev_speakers=2, seed=0)
    return out_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    torch.manual_seed(1)  # not the evaluation seed, so that the random-init baseline is another network
    SpidrForPreTraining(tiny_config()).save_pretrained(path)
    SpidrFeatureExtractor().save_pretrained(path)
    return path


def check_schema(report: dict) -> None:
    assert set(report) == {"model", "dataset", "split", "num_abx_tokens", "results", "stored_kmeans_layer"}
    assert report["stored_kmeans_layer"] is None  # no centroids stored: every k-means is fitted here
    assert isinstance(report["model"], str) and isinstance(report["dataset"], str)
    assert report["split"] == "dev" and isinstance(report["num_abx_tokens"], int) and report["num_abx_tokens"] > 0
    for record in report["results"]:
        assert set(record) == {"system", "representation", "layer", "metric", "value"}
        assert record["system"] in SYSTEMS and record["representation"] in REPRESENTATIONS
        assert record["metric"] in METRICS
        assert record["layer"] is None or isinstance(record["layer"], int)
        assert isinstance(record["value"], float) and math.isfinite(record["value"])
        if record["metric"].startswith("abx"):
            assert 0 <= record["value"] <= 100
        if record["metric"] in ("pnmi", "phone_purity", "cluster_purity"):
            assert 0 <= record["value"] <= 1


def values(report: dict, **conditions) -> dict:
    return {
        (r["system"], r["representation"], r["layer"], r["metric"]): r["value"]
        for r in report["results"]
        if all(r[key] == value for key, value in conditions.items())
    }


@pytest.mark.slow
def test_cli_end_to_end(corpus_dir, model_dir, tmp_path, capsys):
    output = tmp_path / "report"
    arguments = ["--units", "codebook", "kmeans", "--num-clusters", "8", "--kmeans-frames", "2000"]
    assert main(["evaluate", str(model_dir), "--dataset", str(corpus_dir), "--output", str(output), *arguments]) == 0
    report = json.loads((output / "results.json").read_text())
    check_schema(report)
    table = capsys.readouterr().out
    assert "abx_within" in table and "random_init" in table and "log_mel" in table

    for system in ("model", "random_init"):
        assert {key[2] for key in values(report, system=system, representation="layer_results")} == {1, 2, 3, 4}
        assert {key[2] for key in values(report, system=system, representation="codebook")} == {3, 4}
        kmeans = values(report, system=system, representation="kmeans")
        assert {key[3] for key in kmeans} == METRICS and {key[2] for key in kmeans} == {1, 2, 3, 4}
        assert all(v <= 8 for k, v in kmeans.items() if k[3] == "active_codewords")
    # A trained-by-nobody model and its re-drawn initialisation are different networks
    model_scores = values(report, system="model", representation="layer_results", metric="abx_within")
    random_scores = values(report, system="random_init", representation="layer_results", metric="abx_within")
    assert list(model_scores.values()) != list(random_scores.values())
    log_mel_scores = values(report, system="log_mel")
    assert {key[1:3] for key in log_mel_scores} == {("log_mel", None), ("kmeans", None)}
    # Log-mel frames tell synthetic phones apart: far from chance when tokens and frames are aligned right
    assert log_mel_scores["log_mel", "log_mel", None, "abx_within"] < 20
    assert log_mel_scores["log_mel", "log_mel", None, "abx_across"] < 45
    for name in ("abx.png", "pnmi.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heatmaps = sorted(path.name for path in output.glob("cooccurrence_*.png"))
    assert [name.split("_layer")[0] for name in heatmaps] == ["cooccurrence_codebook", "cooccurrence_kmeans"]


@pytest.mark.slow
def test_python_api_default_units(corpus_dir, model_dir):
    """Default units of a checkpoint with heads are codebook units; nothing is written without output_dir."""
    report = evaluate_model(model_dir, corpus_dir, layers=[4], max_utterances=4)
    check_schema(report.to_dict())
    representations = {result.row for result in report.results}
    assert representations == {
        ("model", "layer_results", 4),
        ("model", "codebook", 4),
        ("random_init", "layer_results", 4),
        ("random_init", "codebook", 4),
        ("log_mel", "log_mel", None),
    }
    full = evaluate_model(model_dir, corpus_dir, layers=[4], units=["codebook"])
    assert report.num_abx_tokens < full.num_abx_tokens


def test_student_checkpoint_gets_kmeans_units(corpus_dir, tmp_path):
    torch.manual_seed(2)
    SpidrModel(tiny_config()).save_pretrained(tmp_path)
    SpidrFeatureExtractor().save_pretrained(tmp_path)
    report = evaluate_model(tmp_path, corpus_dir, layers=[1], num_clusters=4, kmeans_frames=500, max_utterances=3)
    assert {r.representation for r in report.results if r.system == "model"} == {"layer_results", "kmeans"}
    with pytest.raises(ValueError, match="no trained codebook heads"):
        evaluate_model(tmp_path, corpus_dir, units=["codebook"])


@pytest.mark.parametrize("objective", ["spidr", "dinosr"])
def test_codebook_units_equal_get_units(objective):
    torch.manual_seed(0)
    model = SpidrForPreTraining(tiny_config(objective=objective)).eval()
    audios = [np.random.default_rng(n).standard_normal(n).astype(np.float32) for n in (8000, 12000, 5000)]
    feature_extractor = SpidrFeatureExtractor()
    representations = ModelRepresentations(model, feature_extractor, [1, 4], [3, 4], "cpu")(audios)
    inputs = feature_extractor(audios, sampling_rate=16000, return_tensors="pt")
    for layer in (3, 4):
        expected = model.get_units(inputs["input_values"], inputs["attention_mask"], layer=layer)
        for row, units in enumerate(representations.units[layer]):
            assert torch.equal(units, expected[row, : len(units)])
            assert (expected[row, len(units) :] == -1).all()


def test_log_mel_frames_match_the_model():
    audio = np.random.default_rng(0).standard_normal(16000 + 123).astype(np.float32)
    features = log_mel(audio)
    model = SpidrModel(tiny_config())
    assert (
        features.shape == (num_frames(len(audio)), 80) == (int(model._get_feat_extract_output_lengths(len(audio))), 80)
    )
    assert torch.allclose(features.mean(0), torch.zeros(80), atol=1e-4)


def _corrupted_copy(corpus_dir, tmp_path, transform):
    corpus = load_from_disk(str(corpus_dir))
    transform(corpus).save_to_disk(str(tmp_path))
    shutil.copy(corpus_dir / "dev.item", tmp_path / "dev.item")
    return tmp_path


def _overrun(corpus):
    def shift(row):
        row["phones"][-1]["end"] += 0.5
        return row

    corpus["dev"] = corpus["dev"].map(shift)
    return corpus


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda corpus: corpus.remove_columns("phones"), "lacks the column"),
        (_overrun, "after the audio"),
    ],
)
def test_bad_dataset(corpus_dir, model_dir, tmp_path, transform, message):
    broken = _corrupted_copy(corpus_dir, tmp_path, transform)
    with pytest.raises(ValueError, match=message):
        evaluate_model(model_dir, broken)


@pytest.mark.parametrize(
    ("item_text", "message"),
    [
        ("#file onset offset #phone prev-phone next-phone speaker\n", "has no items"),
        ("", "header"),
        ("#file onset offset #phone prev-phone next-phone speaker\nnope 0.1 0.2 a b c s\n", "not in the dev split"),
        ("#file onset offset #phone prev-phone next-phone speaker\n{file} 0.1 0.2 a b s\n", "expected 7 fields"),
        ("#file onset offset #phone prev-phone next-phone speaker\n{file} 0.101 0.105 a b c s\n", "no 20 ms frame"),
        ("#file onset offset #phone prev-phone next-phone speaker\n{file} 0.1 99.0 a b c s\n", "beyond the audio"),
    ],
)
def test_bad_item_file(corpus_dir, model_dir, tmp_path, item_text, message):
    broken = _corrupted_copy(corpus_dir, tmp_path, lambda corpus: corpus)
    first_file = load_from_disk(str(corpus_dir))["dev"][0]["id"]
    (broken / "dev.item").write_text(item_text.format(file=first_file))
    with pytest.raises(ValueError, match=message):
        evaluate_model(model_dir, broken)


def test_bad_arguments_print_one_line(corpus_dir, model_dir, tmp_path, capsys):
    for arguments, message in [
        (["--layers", "9"], "Layer 9 is not a layer of this model: it has layers 1 to 4"),
        (["--layers", "1-2", "--units", "codebook"], "None of layers [1, 2] has a codebook head"),
        (
            ["--dataset", str(tmp_path)],
            f"{tmp_path} is not a dataset saved with DatasetDict.save_to_disk (see `spidr-hf corpus`)",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", str(model_dir), "--dataset", str(corpus_dir), *arguments])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert "Traceback" not in error
        assert error.rstrip("\n").split("\n")[-1].startswith(f"spidr-hf evaluate: error: {message}")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_utterances": 0}, "max_utterances must be positive"),
        ({"num_clusters": 0}, "num_clusters must be positive"),
        ({"units": ["vq"]}, "Unknown unit kind"),
    ],
)
def test_bad_settings(corpus_dir, model_dir, arguments, message):
    with pytest.raises(ValueError, match=message):
        evaluate_model(model_dir, corpus_dir, **arguments)


def test_missing_model(corpus_dir, tmp_path):
    with pytest.raises(ValueError, match="Cannot load the model"):
        evaluate_model(tmp_path / "nothing", corpus_dir)


def test_parse_layers():
    assert parse_layers("6") == [6]
    assert parse_layers("1-3,6,5-5") == [1, 2, 3, 5, 6]
    for bad in ("", "a", "4-2", "1,,2"):
        with pytest.raises(Exception, match="bad layer"):
            parse_layers(bad)


def test_comparison_with_the_random_initialisation_uses_each_systems_best_layer():
    results = [
        EvaluationResult("model", "layer_results", 1, "abx_within", 30.0),
        EvaluationResult("model", "layer_results", 2, "abx_within", 20.0),
        EvaluationResult("random_init", "layer_results", 1, "abx_within", 25.0),
        EvaluationResult("random_init", "layer_results", 2, "abx_within", 40.0),
        EvaluationResult("model", "codebook", 2, "pnmi", 0.10),
        EvaluationResult("random_init", "codebook", 2, "pnmi", 0.10),
        EvaluationResult("model", "kmeans", 1, "pnmi", 0.05),
        EvaluationResult("random_init", "kmeans", 1, "pnmi", 0.20),
        EvaluationResult("log_mel", "log_mel", None, "abx_within", 5.0),
        EvaluationResult("model", "codebook", 2, "bitrate", 100.0),
    ]
    report = EvaluationReport(model="tiny", dataset="corpus", split="dev", num_abx_tokens=10, results=results)
    comparisons = {(c.representation, c.metric): c for c in compare_to_initialisation(report)}
    assert set(comparisons) == {("layer_results", "abx_within"), ("codebook", "pnmi"), ("kmeans", "pnmi")}
    abx = comparisons["layer_results", "abx_within"]
    assert (abx.trained.layer, abx.initial.layer, abx.better) == (2, 1, True)
    assert comparisons["codebook", "pnmi"].better is False  # a tie is no improvement
    assert comparisons["kmeans", "pnmi"].better is False
    text = format_comparison(report)
    assert "20.00 (layer 2) vs 25.00 (layer 1)  better" in text
    assert "0.050 (layer 1) vs 0.200 (layer 1)  NOT better" in text


@pytest.mark.slow
def test_an_earlier_report_is_kept_unless_overwrite_is_asked(corpus_dir, model_dir, tmp_path, capsys):
    output = tmp_path / "report"
    output.mkdir()
    (output / "results.json").write_text('{"earlier": true}')
    command = ["evaluate", str(model_dir), "--dataset", str(corpus_dir), "--layers", "4", "--max-utterances", "4"]
    with pytest.raises(SystemExit):  # refused before any work
        main([*command, "--output", str(output)])
    assert "already holds a report" in capsys.readouterr().err
    assert (output / "results.json").read_text() == '{"earlier": true}'
    (tmp_path / "a_file").write_text("mine")
    for destination, message in ((tmp_path / "a_file", "is a file"), (tmp_path / "a_file" / "sub", "Cannot create")):
        with pytest.raises(SystemExit):
            main([*command, "--output", str(destination)])
        assert message in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "mine"
    # Plots of the earlier report that this one does not draw go; the user's other files stay
    for name in ("pnmi.png", "cooccurrence_kmeans_layer9.png", "notes.txt"):
        (output / name).write_text("earlier")
    assert main([*command, "--output", str(output), "--overwrite", "--units", "codebook"]) == 0
    assert "results" in json.loads((output / "results.json").read_text())
    assert not (output / "cooccurrence_kmeans_layer9.png").exists() and (output / "notes.txt").read_text() == "earlier"
    assert sorted(path.name for path in output.glob("*.png")) == [
        "abx.png",
        "cooccurrence_codebook_layer4.png",
        "pnmi.png",
    ]
    assert (output / "pnmi.png").read_bytes() != b"earlier"


def test_a_model_with_other_frames_is_refused_not_misaligned(corpus_dir, tmp_path):
    """ABX items and alignments are read on 20 ms frames: a model with 10 ms frames would be scored at wrong indices."""
    torch.manual_seed(0)
    SpidrForPreTraining(tiny_config(conv_stride=(5, 2, 2, 2, 2, 2, 1))).save_pretrained(tmp_path / "model")  # 10 ms
    with pytest.raises(ValueError, match="its ABX tokens would be misaligned"):
        evaluate_model(tmp_path / "model", corpus_dir, layers=[4], units=["kmeans"])
