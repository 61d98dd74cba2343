"""k-means units stored with the model: `spidr-hf kmeans`, the units pipeline, `extract`, remote code."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, Cut, renames_cut_after, write_audio
from safetensors.torch import load_file
from sklearn.cluster import KMeans
from transformers import pipeline

from spidr_hf import SpidrConfig, SpidrForPreTraining, SpidrModel
from spidr_hf.data.aligned_speech import load_split
from spidr_hf.evaluation import evaluate_model
from spidr_hf.evaluation.abx import abx_error
from spidr_hf.evaluation.evaluator import dev_tokens
from spidr_hf.evaluation.items import ITEM_FILE, read_item_file
from spidr_hf.evaluation.report import format_table
from spidr_hf.evaluation.units_quality import LABEL_RATE, UNIT_RATE, frame_labels, units_quality
from spidr_hf.model.modeling_spidr import SpidrKMeans
from spidr_hf.units.extract import extract
from spidr_hf.units.kmeans import StreamingKMeans, fit_kmeans
from spidr_hf_cli import main

LAYER, CLUSTERS = 3, 8


def _blobs(num_frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames around 8 well-separated 16-dim centers, shuffled, and the centers."""
    generator = np.random.default_rng(seed)
    centers = generator.normal(size=(CLUSTERS, 16)).astype(np.float32) * 10
    frames = centers[generator.integers(CLUSTERS, size=num_frames)] + generator.normal(size=(num_frames, 16))
    return frames.astype(np.float32), centers


def _streamed(frames: np.ndarray, pieces: list[int], total: int, memory: int) -> np.ndarray:
    kmeans = StreamingKMeans(CLUSTERS, 0, total, memory)
    for piece in np.split(frames, np.cumsum(pieces)[:-1]):
        kmeans.add(piece)
    return kmeans.centroids()


def test_streaming_kmeans_within_memory_is_the_in_memory_fit_and_ignores_how_frames_arrive():
    frames, _ = _blobs(6000, 0)
    in_memory = fit_kmeans(frames[:5000], CLUSTERS, 0).cluster_centers_
    assert np.array_equal(_streamed(frames, [6000], 5000, 5000), in_memory)  # the frames beyond `total` are unused
    assert np.array_equal(_streamed(frames, [1, 2999, 1500, 1500], 5000, 8000), in_memory)
    streamed = _streamed(frames, [6000], 6000, 1000)
    assert np.array_equal(_streamed(frames, [999, 2, 3000, 1999], 6000, 1000), streamed)
    assert not np.array_equal(streamed, fit_kmeans(frames[:1000], CLUSTERS, 0).cluster_centers_)  # it learned more


def test_streaming_kmeans_over_more_frames_than_memory_finds_the_clusters():
    frames, centers = _blobs(40_000, 1)
    streamed = _streamed(frames, [40_000], 40_000, 4000)
    distances = np.linalg.norm(streamed[:, None] - centers[None], axis=-1)
    assert sorted(distances.argmin(axis=1).tolist()) == list(range(CLUSTERS))  # one centroid per cluster
    assert distances.min(axis=1).max() < 0.1  # each within 0.1 of its center (frames have unit noise)


def test_nearest_centroid_equals_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 300, 16, generator=generator)
    fitted = KMeans(n_clusters=CLUSTERS, n_init=1, random_state=0).fit(frames.flatten(0, 1).numpy())
    kmeans = SpidrKMeans(_config(16))
    kmeans.centroids.copy_(torch.from_numpy(fitted.cluster_centers_))
    ours = kmeans(frames).flatten().numpy()
    np.testing.assert_array_equal(ours, fitted.predict(frames.flatten(0, 1).numpy()))


def _config(hidden_size: int) -> SpidrConfig:
    return SpidrConfig(**{**TINY_CONFIG, "hidden_size": hidden_size}, kmeans_layer=LAYER, kmeans_num_clusters=CLUSTERS)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kmeans_layer": 2}, "go together"),
        ({"kmeans_num_clusters": 8}, "go together"),
        ({"kmeans_layer": 9, "kmeans_num_clusters": 8}, "kmeans_layer"),
        ({"kmeans_layer": 2, "kmeans_num_clusters": 1}, "kmeans_num_clusters"),
    ],
)
def test_config_checks_the_kmeans_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        SpidrConfig(**TINY_CONFIG, **settings)


def test_models_without_centroids_keep_their_weights_and_have_no_kmeans_units():
    model = SpidrForPreTraining(SpidrConfig(**TINY_CONFIG))
    assert not any("kmeans" in key for key in model.state_dict())
    with pytest.raises(ValueError, match="spidr-hf kmeans"):
        model.spidr.get_kmeans_units(torch.randn(1, 8000))


@pytest.fixture(scope="module")
def kmeans_dir(source_dir, corpus, tmp_path_factory) -> Path:
    """The tiny saved model with k-means centroids of layer 3 fitted on the built-in corpus (written in place)."""
    folder = tmp_path_factory.mktemp("kmeans") / "model"
    shutil.copytree(source_dir, folder)
    before = load_file(folder / "model.safetensors")
    arguments = [
        "kmeans",
        str(folder),
        "--dataset",
        str(corpus),
        "--layer",
        str(LAYER),
        "--num-clusters",
        str(CLUSTERS),
    ]
    assert main([*arguments, "--kmeans-frames", "2000", "--device", "cpu"]) == 0
    after = load_file(folder / "model.safetensors")
    # Every other weight is unchanged; the centroids are new
    assert set(after) - set(before) == {"spidr.kmeans.centroids"}
    assert all(torch.equal(after[key], value) for key, value in before.items())
    return folder


@pytest.mark.slow
def test_kmeans_command_stores_centroids_fitted_on_the_layer(kmeans_dir):
    config = json.loads((kmeans_dir / "config.json").read_text())
    assert (config["kmeans_layer"], config["kmeans_num_clusters"]) == (LAYER, CLUSTERS)
    model = SpidrModel.from_pretrained(kmeans_dir)
    centroids = model.kmeans.centroids
    assert centroids.shape == (CLUSTERS, TINY_CONFIG["hidden_size"]) and torch.isfinite(centroids).all()
    assert len(torch.unique(centroids, dim=0)) == CLUSTERS


@pytest.mark.slow
def test_pipeline_extract_and_model_give_the_same_kmeans_units(kmeans_dir, tmp_path):
    from spidr_hf.model.pipeline_spidr import load_audio

    audio = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    path = write_audio(tmp_path / "audio" / "a.wav", audio)
    decoded = load_audio(path, None, 16000)
    units = pipeline("spidr-units", model=str(kmeans_dir), trust_remote_code=True, device="cpu")(
        decoded, sampling_rate=16000, units="kmeans"
    )
    model = SpidrModel.from_pretrained(kmeans_dir).eval()
    inputs = units_inputs(decoded)
    expected = model.get_kmeans_units(**inputs)[0].numpy()
    np.testing.assert_array_equal(units["units"], expected)
    assert len(np.unique(expected)) > 1
    extract(kmeans_dir, path.parent, tmp_path / "out", layer=LAYER, features=False, units="kmeans")
    line = (tmp_path / "out" / "units.txt").read_text().strip()
    assert line == "a\t" + " ".join(map(str, expected))
    with pytest.raises(ValueError, match=f"layer {LAYER}"):
        pipeline("spidr-units", model=str(kmeans_dir), trust_remote_code=True, device="cpu")(
            decoded, sampling_rate=16000, units="kmeans", layer=4
        )


@pytest.mark.slow  # three evaluations of the tiny model: about 10 s
def test_evaluate_scores_the_stored_kmeans_units_the_pipeline_gives(kmeans_dir, corpus, caplog):
    # The model's figures recomputed from the pipeline's units of each dev utterance
    units = pipeline("spidr-units", model=str(kmeans_dir), trust_remote_code=True, device="cpu")
    dev = load_split(corpus, "dev")
    unit_lists = [units(utterance.audio, sampling_rate=16000, units="kmeans")["units"] for utterance in dev]
    labels = [
        frame_labels(utterance.phones, len(sequence) * LABEL_RATE // UNIT_RATE)
        for utterance, sequence in zip(dev, unit_lists, strict=True)
    ]
    expected = units_quality(unit_lists, labels, CLUSTERS)
    tokens = dev_tokens(dev, read_item_file(corpus / ITEM_FILE), subset=False)
    token_units = [
        torch.from_numpy(unit_lists[utterance][start:end])
        for utterance, start, end in zip(tokens.utterance, tokens.start, tokens.end, strict=True)
    ]
    abx = abx_error(token_units, tokens.phones, tokens.contexts, tokens.speakers, distance="identical", seed=0)
    # (one dev speaker: no across-speaker score, which the report leaves out)
    expected |= {f"abx_{mode}": value for mode, value in abx.items() if not np.isnan(value)}

    def model_kmeans(report) -> dict[str, float]:
        return {r.metric: r.value for r in report.results if r.row == ("model", "kmeans", LAYER)}

    # 16 clusters asked: the stored layer keeps the stored 8, for the model and its random initialisation, and says so
    options = {"layers": [LAYER], "num_clusters": 16, "kmeans_frames": 2000, "batch_size": 1}
    with caplog.at_level(logging.WARNING, logger="spidr_hf"):
        report = evaluate_model(kmeans_dir, corpus, units=["kmeans"], **options)
    assert f"model's {CLUSTERS} stored centroids" in caplog.text and "not 16 clusters" in caplog.text
    assert report.stored_kmeans_layer == LAYER
    assert f"k-means units of layer {LAYER}: the model's stored centroids" in format_table(report)
    assert model_kmeans(report) == expected
    initial = {r.metric: r.value for r in report.results if r.row == ("random_init", "kmeans", LAYER)}
    assert initial["active_codewords"] <= CLUSTERS
    # By default a model with stored centroids gets its codebook and k-means units evaluated
    default = evaluate_model(kmeans_dir, corpus, **options)
    assert {r.representation for r in default.results if r.system == "model"} >= {"codebook", "kmeans"}
    assert model_kmeans(default) == model_kmeans(report)
    refit = evaluate_model(kmeans_dir, corpus, units=["kmeans"], refit_kmeans=True, **options)
    assert refit.stored_kmeans_layer is None
    assert model_kmeans(refit)["active_codewords"] > CLUSTERS  # its own 16 clusters
    # Too few k-means frames for the stored clusters: found before any work
    with pytest.raises(ValueError, match=rf"kmeans_frames \(4\) must be at least the clusters \({CLUSTERS}\)"):
        evaluate_model(kmeans_dir, corpus, units=["kmeans"], **{**options, "num_clusters": 2, "kmeans_frames": 4})


def units_inputs(audio: np.ndarray) -> dict[str, torch.Tensor]:
    from spidr_hf import SpidrFeatureExtractor

    return dict(SpidrFeatureExtractor()(audio, sampling_rate=16000, return_tensors="pt"))


REMOTE_CODE_UNITS = textwrap.dedent(
    """
    import importlib.abc, sys
    import numpy as np

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "spidr_hf" or name.startswith("spidr_hf."):
                raise ImportError("spidr_hf is hidden")

    sys.meta_path.insert(0, Hide())
    from transformers import pipeline

    units = pipeline("spidr-units", model=sys.argv[1], trust_remote_code=True, device="cpu")
    audio = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    print(" ".join(map(str, units(audio, sampling_rate=16000, units="kmeans")["units"])))
    """
)


@pytest.mark.slow
def test_a_model_cast_or_edited_after_its_centroids_were_set_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = SpidrModel(SpidrConfig(**TINY_CONFIG))
    model.set_kmeans_centroids(LAYER, torch.randn(CLUSTERS, TINY_CONFIG["hidden_size"]))
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")  # the centroids saved rounded to bf16
    loaded = SpidrModel.from_pretrained(tmp_path / "bf16")
    assert torch.equal(loaded.kmeans.centroids, model.kmeans.centroids.float())
    model.float().kmeans.centroids.mul_(2.0)  # edited by hand, then saved
    model.save_pretrained(tmp_path / "edited")
    assert torch.equal(SpidrModel.from_pretrained(tmp_path / "edited").kmeans.centroids, model.kmeans.centroids)


def test_kmeans_units_through_remote_code_without_spidr_hf(kmeans_dir, tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    completed = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_CODE_UNITS, str(kmeans_dir)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    audio = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    expected = SpidrModel.from_pretrained(kmeans_dir).eval().get_kmeans_units(**units_inputs(audio))[0]
    assert completed.stdout.split() == [str(unit) for unit in expected.tolist()]


@pytest.mark.slow
def test_kmeans_command_on_a_student_only_folder_keeps_it_student_only(source_dir, corpus, tmp_path):
    folder = tmp_path / "student"
    SpidrForPreTraining.from_pretrained(source_dir).spidr.save_pretrained(folder)
    shutil.copy(source_dir / "preprocessor_config.json", folder)
    before = load_file(folder / "model.safetensors")
    arguments = ["--layer", str(LAYER), "--num-clusters", str(CLUSTERS), "--kmeans-frames", "2000", "--device", "cpu"]
    assert main(["kmeans", str(folder), "--dataset", str(corpus), *arguments]) == 0
    after = load_file(folder / "model.safetensors")
    assert set(after) - set(before) == {"kmeans.centroids"}  # no heads, teacher or codebooks appear
    assert all(torch.equal(after[key], value) for key, value in before.items())
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["SpidrModel"]


def test_kmeans_command_cut_between_files_leaves_a_whole_model(source_dir, corpus, tmp_path, monkeypatch):
    """
    Files are replaced one by one: cut before any of them, the folder loads as the old model (no centroids, the same
    units) or with the new centroids; never with a config that names centroids the weights lack.
    """
    arguments = ["--layer", str(LAYER), "--num-clusters", str(CLUSTERS), "--kmeans-frames", "2000", "--device", "cpu"]
    audio = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    inputs = units_inputs(audio)
    old_units = SpidrForPreTraining.from_pretrained(source_dir).eval().get_units(**inputs, layer=LAYER)[0]
    cut_at = 0
    while True:
        folder = tmp_path / f"model{cut_at}"
        shutil.copytree(source_dir, folder)
        with renames_cut_after(monkeypatch, cut_at) as replaced:
            try:
                main(["kmeans", str(folder), "--dataset", str(corpus), *arguments])
                finished = True
            except Cut:
                finished = False
        model = SpidrForPreTraining.from_pretrained(folder).eval()
        if finished:
            assert model.spidr.kmeans is not None and torch.isfinite(model.spidr.kmeans.centroids).all()
            break
        if model.spidr.kmeans is None:  # the old model
            assert torch.equal(model.get_units(**inputs, layer=LAYER)[0], old_units)
        else:  # centroids loaded from the weights, not left at their initial zeros
            centroids = model.spidr.kmeans.centroids
            loaded = torch.isfinite(centroids).all() and len(centroids.unique(dim=0)) == CLUSTERS
            assert loaded, f"cut after {replaced}: the config names centroids the weights lack"
        cut_at += 1
    assert cut_at > 2  # weights, config and code files were replaced one by one


@pytest.mark.slow
@pytest.mark.parametrize("new_clusters", [CLUSTERS, 5], ids=["same-count", "other-count"])
def test_a_refit_cut_at_any_replacement_never_gives_other_units_and_a_rerun_repairs_it(
    kmeans_dir, corpus, tmp_path, monkeypatch, new_clusters
):
    """
    Re-fitting centroids in place (layer 2 over the stored layer 3), cut before each file replacement: every load
    gives the old model's units, the new one's, or a one-line error naming the mismatch, never other units; the same
    command run again then gives the uninterrupted result. With --output, a cut leaves no folder.
    """
    from spidr_hf.io import atomic_files
    from spidr_hf.model.loading import load

    arguments = ["--layer", "2", "--num-clusters", str(new_clusters), "--kmeans-frames", "2000", "--device", "cpu"]
    inputs = units_inputs(np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1)
    old_units = SpidrModel.from_pretrained(kmeans_dir).eval().get_kmeans_units(**inputs)
    finished = tmp_path / "finished"
    shutil.copytree(kmeans_dir, finished)
    assert main(["kmeans", str(finished), "--dataset", str(corpus), *arguments]) == 0
    new_units = SpidrModel.from_pretrained(finished).eval().get_kmeans_units(**inputs)
    assert not torch.equal(new_units, old_units)
    expected = load_file(finished / "model.safetensors")["spidr.kmeans.centroids"]
    cut_at = 0
    while True:
        folder = tmp_path / f"model{cut_at}"
        shutil.copytree(kmeans_dir, folder)
        with renames_cut_after(monkeypatch, cut_at) as replaced:
            try:
                main(["kmeans", str(folder), "--dataset", str(corpus), *arguments])
                break
            except Cut:
                pass
        try:
            units = SpidrModel.from_pretrained(folder).eval().get_kmeans_units(**inputs)
        except (ValueError, RuntimeError) as error:  # RuntimeError: transformers' size mismatch, other counts only
            # transformers' refusal of the other count's centroids names `ignore_mismatched_sizes`
            assert "out of step" in str(error) or "ignore_mismatched_sizes" in str(error), f"cut after {replaced}"
            with pytest.raises(ValueError, match=r"out of step|does not match its weights' sizes") as refused:
                load(folder)  # what extract, evaluate and push load with: one line
            assert "\n" not in str(refused.value)
        else:
            assert torch.equal(units, old_units) or torch.equal(units, new_units), f"cut after {replaced}"
        assert main(["kmeans", str(folder), "--dataset", str(corpus), *arguments]) == 0  # the rerun repairs it
        assert torch.equal(load_file(folder / "model.safetensors")["spidr.kmeans.centroids"], expected)
        assert not [path.name for path in folder.parent.iterdir() if path.name.startswith(".")]  # no scratch left
        cut_at += 1
    assert cut_at > 2
    # --output: a cut leaves no folder at all, and the rerun writes it
    output = tmp_path / "output"
    monkeypatch.setattr(atomic_files.shutil, "move", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        main(["kmeans", str(kmeans_dir), "--dataset", str(corpus), *arguments, "--output", str(output)])
    monkeypatch.undo()
    assert not output.exists()
    assert main(["kmeans", str(kmeans_dir), "--dataset", str(corpus), *arguments, "--output", str(output)]) == 0
    assert torch.equal(load_file(output / "model.safetensors")["spidr.kmeans.centroids"], expected)


def test_kmeans_in_place_checks_it_can_write_before_fitting(source_dir, corpus, tmp_path, capsys, monkeypatch):
    from spidr_hf.io import atomic_files

    folder = tmp_path / "parent" / "model"
    shutil.copytree(source_dir, folder)
    writable = os.access
    monkeypatch.setattr(
        atomic_files.os, "access", lambda path, mode: Path(path) != folder.parent and writable(path, mode)
    )
    with pytest.raises(SystemExit):
        main(["kmeans", str(folder), "--dataset", str(corpus), "--layer", str(LAYER), "--num-clusters", "4"])
    captured = capsys.readouterr()
    assert f"Could not write into {folder.parent}: permission denied (checked before any work)" in captured.err
    assert "Layer features" not in captured.err  # nothing was computed


def test_kmeans_command_errors(source_dir, corpus, tmp_path, capsys):
    def error(*arguments: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(["kmeans", *arguments])
        assert exit_info.value.code == 2
        message = capsys.readouterr().err
        assert message.count("\n") == 1, message
        return message

    assert "no config.json" in error(str(tmp_path), "--dataset", str(corpus))
    assert "Layer 7 is not a layer of this model: it has layers 1 to 4" in error(
        str(source_dir), "--dataset", str(corpus), "--layer", "7"
    )
    assert "--num-clusters must be at least 2" in error(
        str(source_dir), "--dataset", str(corpus), "--num-clusters", "1"
    )
    frames = ["--num-clusters", "8", "--kmeans-frames", "5"]
    assert "--kmeans-frames (5) must be at least --num-clusters (8)" in error(
        str(source_dir), "--dataset", str(corpus), *frames
    )
    memory = ["--num-clusters", "8", "--kmeans-memory-frames", "5"]
    assert "--kmeans-memory-frames (5) must be at least --num-clusters (8)" in error(
        str(source_dir), "--dataset", str(corpus), *memory
    )
    from spidr_hf import SpidrForCTC

    fine_tuned = tmp_path / "ctc"
    SpidrForCTC.from_pretrained(source_dir, vocab_size=5, pad_token_id=0).save_pretrained(fine_tuned)
    capsys.readouterr()  # the progress bars of loading and saving it
    saved = (fine_tuned / "model.safetensors").read_bytes()
    assert "is a fine-tuned SpidrForCTC folder" in error(str(fine_tuned), "--dataset", str(corpus))
    assert (fine_tuned / "model.safetensors").read_bytes() == saved  # its head is still there
    # The corpus' train split (about 2000 frames) has too few frames: found after the model ran, so progress bars come
    # first, and the error is the one last line
    with pytest.raises(SystemExit):
        main(
            [
                "kmeans",
                str(source_dir),
                "--dataset",
                str(corpus),
                "--num-clusters",
                "5000",
                "--kmeans-frames",
                "9000",
                "--layer",
                "2",
            ]
        )
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert "as many training frames as clusters (5000), got 2" in stderr.strip().splitlines()[-1]
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    assert "not empty" in error(str(source_dir), "--dataset", str(corpus), "--output", str(tmp_path / "used"))
    assert "is a file" in error(str(source_dir), "--dataset", str(corpus), "--output", str(tmp_path / "used" / "file"))


def test_kmeans_on_a_folder_skips_files_too_short_for_a_frame_and_names_them(source_dir, corpus, tmp_path, capsys):
    audio = tmp_path / "audio"
    for row in load_split(corpus, "train")[:3]:
        write_audio(audio / f"{row.id}.wav", row.audio)
    write_audio(audio / "short.wav", np.zeros(399, np.float32))
    options = [
        "--layer",
        str(LAYER),
        "--num-clusters",
        str(CLUSTERS),
        "--device",
        "cpu",
        "--output",
        str(tmp_path / "m"),
        "--kmeans-frames",
        "1000000",
    ]
    assert main(["kmeans", str(source_dir), "--audio", str(audio), *options]) == 0
    printed = capsys.readouterr().out
    assert f"Skipped a file shorter than 400 samples (no frame): {audio / 'short.wav'}" in printed
    # What was fitted, when the folder has fewer frames than asked for
    fitted = re.search(r"The audio has (\d+) frames, fewer than the 1000000 asked for: k-means was fitted on", printed)
    assert fitted is not None and 0 < int(fitted[1]) < 1000000


@pytest.mark.slow
def test_kmeans_in_two_torchrun_processes_fits_the_centroids_of_one_process(source_dir, corpus, tmp_path):
    options = ["--dataset", str(corpus), "--layer", str(LAYER), "--num-clusters", str(CLUSTERS)]
    options += ["--kmeans-frames", "2000", "--batch-size", "2", "--device", "cpu"]  # several batches for each process
    options += ["--kmeans-memory-frames", "700"]  # streamed: fitted on the first 700 frames, then refined twice
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["kmeans", str(source_dir), *options, "--output", str(one)]) == 0
    # Standalone: the rendezvous binds a port of the system's choosing, not one found free beforehand and maybe taken
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*launcher, "-m", "spidr_hf", "kmeans", str(source_dir), *options, "--output", str(two)]
    completed = subprocess.run(command, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("Wrote 8 k-means centroids") == 1  # the first process writes, once
    centroids = load_file(one / "model.safetensors")["spidr.kmeans.centroids"]
    assert torch.equal(centroids, load_file(two / "model.safetensors")["spidr.kmeans.centroids"])
    in_memory = tmp_path / "in_memory"
    assert (
        main(["kmeans", str(source_dir), *options, "--kmeans-memory-frames", "2000", "--output", str(in_memory)]) == 0
    )
    assert not torch.equal(centroids, load_file(in_memory / "model.safetensors")["spidr.kmeans.centroids"])


@pytest.mark.slow
def test_a_process_that_fails_stops_every_process_of_a_kmeans_job(source_dir, corpus, tmp_path):
    """Launched without torchrun's agent (which kills the rest), as `srun` starts one process a task: no process waits
    for a failed one in the frame exchange until gloo's 30-minute timeout."""
    import socket

    audio = tmp_path / "audio"
    for row in load_split(corpus, "train")[:5]:
        write_audio(audio / f"{row.id}.wav", row.audio)
    (audio / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(5000))  # no readable header
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    options = ["--audio", str(audio), "--layer", str(LAYER), "--num-clusters", str(CLUSTERS), "--device", "cpu"]
    options += ["--batch-size", "1", "--output", str(tmp_path / "m")]  # every file is needed: 100000 frames
    environ = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "spidr_hf", "kmeans", str(source_dir), *options],
            env={**environ, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [2, 2], [stderr[-2000:] for _, stderr in outputs]
    last_lines = [stderr.strip().splitlines()[-1] for _, stderr in outputs]
    assert all("Traceback" not in stderr for _, stderr in outputs)
    failed = [index for index, line in enumerate(last_lines) if "k-means stopped" not in line]
    assert len(failed) == 1 and "garbage.wav" in last_lines[failed[0]]  # the process that read it: its own error
    assert f"k-means stopped: process {failed[0]} failed: " in last_lines[1 - failed[0]]
    assert "garbage.wav" in last_lines[1 - failed[0]]
    assert not (tmp_path / "m").exists()


def test_a_config_naming_centroids_the_weights_lack_is_a_one_line_error(kmeans_dir, tmp_path, capsys):
    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(kmeans_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["spidr.kmeans.centroids"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    # The model loads (transformers initialises what is missing), but its units are refused, not made up
    model = SpidrModel.from_pretrained(broken).eval()
    assert torch.isnan(model.kmeans.centroids).all()
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    with pytest.raises(ValueError, match="the weights hold none"):
        model.get_kmeans_units(**units_inputs(audio))
    with pytest.raises(ValueError, match="the weights hold none"):
        units_pipeline = pipeline("spidr-units", model=str(broken), device="cpu", trust_remote_code=True)
        units_pipeline(audio, sampling_rate=16000, units="kmeans")
    # The commands say it in one line, before any work
    with pytest.raises(SystemExit):
        main(["extract", str(broken), str(tmp_path), str(tmp_path / "out"), "--units", "kmeans"])
    error = capsys.readouterr().err
    assert "weights hold none" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_a_negative_seed_is_refused_by_the_library_too(source_dir, corpus):
    from spidr_hf.errors import SpidrError
    from spidr_hf.units.stored_kmeans import fit_model_kmeans

    with pytest.raises(SpidrError, match="--seed must be 0 or more, got -1"):
        fit_model_kmeans(source_dir, dataset=corpus, seed=-1)
