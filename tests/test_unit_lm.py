"""Unit language models: training on extracted units, log-probabilities, sLM21 scoring and its submission folder."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_audio
from test_extract import speech_like
from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM

from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining
from spidr_hf.errors import ConfigError, SpidrError
from spidr_hf.slm.score import (
    lexical_accuracy,
    read_gold,
    read_submission,
    score_benchmark,
    syntactic_accuracy,
)
from spidr_hf.slm.unit_lm import (
    UnitVocabulary,
    iter_blocks,
    lm_identity,
    load_unit_lm,
    record_identity,
    sequence_log_probs,
)
from spidr_hf.units.extract import extract
from spidr_hf.units.record import UnitIdentity, read_unit_sequences
from spidr_hf_cli import main

ROOT = Path(__file__).resolve().parents[1]
SOURCE = UnitVocabulary(UnitIdentity("codebook", "m", "0" * 64, 3, 16, True))


def tiny_lm(source: UnitVocabulary = SOURCE) -> OPTForCausalLM:
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=source.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32,
        word_embed_proj_dim=16, max_position_embeddings=64, bos_token_id=source.bos, eos_token_id=source.eos,
        pad_token_id=source.pad,
    )  # fmt: skip
    record_identity(config, source.identity)
    return OPTForCausalLM(config).eval()


def test_scores_are_the_log_probabilities_of_each_sequence_alone():
    model = tiny_lm()
    rng = np.random.default_rng(0)
    sequences = [SOURCE.tokens(rng.integers(0, 16, size=length)) for length in (3, 9, 1, 14, 6)]
    by_hand = []
    for sequence in sequences:  # one at a time, no padding: sum of log P(token t + 1 | tokens up to t)
        ids = torch.tensor([sequence])
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        by_hand.append(sum(log_probs[t, sequence[t + 1]].item() for t in range(len(sequence) - 1)))
    batched = sequence_log_probs(model, sequences, SOURCE.pad, batch_size=2)
    np.testing.assert_allclose(batched, by_hand, rtol=1e-5)
    means = sequence_log_probs(model, sequences, SOURCE.pad, batch_size=3, mean=True)
    per_unit = [value / (len(sequence) - 1) for value, sequence in zip(by_hand, sequences, strict=True)]
    np.testing.assert_allclose(means, per_unit, rtol=1e-5)


def test_tokens_and_packed_blocks():
    assert SOURCE.tokens(np.array([4, 4, 7, 7, 7, 4])) == [16, 4, 7, 4, 17]  # deduplicated, BOS and EOS
    frames = UnitVocabulary(UnitIdentity("codebook", "m", "0" * 64, 3, 16, False))
    assert frames.tokens(np.array([4, 4, 7])) == [16, 4, 4, 7, 17]
    blocks = list(iter_blocks(iter([[16, 1, 2, 17], [16, 3, 17]]), block_size=3, pad=18))
    assert [block["input_ids"] for block in blocks] == [[16, 1, 2], [17, 16, 3], [17, 18, 18]]
    assert blocks[-1]["labels"] == [17, -100, -100] and blocks[-1]["attention_mask"] == [1, 0, 0]
    assert blocks[0]["labels"] == blocks[0]["input_ids"] and blocks[0]["attention_mask"] == [1, 1, 1]


@pytest.mark.parametrize(
    ("model_type", "model_config", "message"),
    [
        ("opt", {"num_hiden_layers": 1}, "Unknown model_config (opt) key 'num_hiden_layers'; did you mean "
         "'num_hidden_layers'?"),
        ("llama", {"ffn_dim": 64, "word_embed_proj_dim": 16}, "Unknown model_config (llama) key 'ffn_dim'"),
        ("opt", {"hidden_size": 32, "num_attention_heads": 3, "word_embed_proj_dim": 32},
         "embed_dim must be divisible by num_heads"),
        ("llama", {"hidden_size": 32, "num_attention_heads": 3}, "hidden size (32) is not a multiple of the number of"),
        ("lama", {}, "Unknown model_type 'lama'; did you mean 'llama'?"),
        ("vit", {}, "model_type 'vit' has no causal language model in transformers"),
        ("opt", {"dropout": 2.0}, "model_config.dropout is a dropout probability, in [0, 1]: got 2.0"),
    ],
)  # fmt: skip
def test_model_configs_the_model_type_does_not_take_are_one_line_errors(model_type, model_config, message):
    from spidr_hf.slm.training import UnitLMArguments, build_unit_lm

    args = UnitLMArguments(units="units", model_type=model_type, model_config=model_config, block_size=32)
    with pytest.raises(ConfigError) as error:
        build_unit_lm(args, SOURCE.identity)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_older_names_a_config_converts_and_aliases_are_taken():
    from spidr_hf.slm.training import UnitLMArguments, build_unit_lm

    small = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "num_hidden_layers": 1}
    llama = build_unit_lm(UnitLMArguments("units", "llama", {**small, "rope_theta": 5000.0}), SOURCE.identity)
    assert llama.config.rope_parameters["rope_theta"] == 5000.0
    gpt2_config = {"hidden_size": 16, "n_head": 2, "n_layer": 1}  # gpt2's own names, and hidden_size for n_embd
    gpt2 = build_unit_lm(UnitLMArguments("units", "gpt2", gpt2_config), SOURCE.identity)
    assert gpt2.config.n_embd == 16 and gpt2.config.num_hidden_layers == 1


def test_a_language_model_that_is_not_finite_cannot_score(tmp_path):
    model = tiny_lm()
    sequences = [SOURCE.tokens(np.array([1, 2, 3]))]
    with torch.no_grad():
        model.model.decoder.layers[0].fc1.weight[0, 0] = float("nan")
    with pytest.raises(SpidrError, match="log-probabilities that are not finite"):
        sequence_log_probs(model, sequences, SOURCE.pad)
    model.save_pretrained(tmp_path / "ulm")
    with pytest.raises(SpidrError, match=f"The unit LM {tmp_path / 'ulm'} has weights that are not finite"):
        load_unit_lm(tmp_path / "ulm", "cpu")


def test_units_beyond_the_number_of_units_are_named():
    with pytest.raises(SpidrError, match=r"The units of f7 go from -25552 to 3, beyond the 16 units"):
        SOURCE.tokens(np.array([3, -25552]), "f7")


def test_unit_datasets_pack_the_files_in_id_order_whatever_the_format_or_shards(source_dir, tmp_path, monkeypatch):
    from spidr_hf.slm.training import UnitLMArguments, unit_datasets
    from spidr_hf.training.splits import held_out

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    audio = tmp_path / "audio"
    for index in range(12):
        write_audio(audio / f"f{(index * 7) % 12:02d}.wav", speech_like(0.4 + index / 20, index, 16000))
    layer = SpidrConfig.from_pretrained(source_dir).codebook_layers[-1]
    units = {}
    for name, options in {"txt": {}, "parquet": {"units_format": "parquet"}}.items():
        units[name] = tmp_path / name
        extract(source_dir, audio, units[name], layer=layer, features=False, units="codebook", **options)
    for part in ("0/2", "1/2"):  # parquet files written by two shards
        extract(source_dir, audio, tmp_path / "sharded", layer=layer, features=False, units="codebook",
                units_format="parquet", shard=part, batch_seconds=2)  # fmt: skip
    units["sharded"] = tmp_path / "sharded"
    assert len(list((tmp_path / "sharded" / "units").glob("*.parquet"))) == 2
    identity, by_id = read_unit_sequences(units["txt"], deduplicate=True)
    source = UnitVocabulary(identity)
    for name, folder in units.items():
        _, train, evaluation = unit_datasets(UnitLMArguments(units=str(folder), block_size=16, eval_fraction=0.25))
        for split, is_held in ((train, False), (evaluation, True)):
            stream = [
                token for id in sorted(by_id) if held_out(id, 0.25) == is_held for token in source.tokens(by_id[id])
            ]
            blocks = [block["input_ids"][: sum(block["attention_mask"])] for block in split]
            assert all(len(block["input_ids"]) == 16 for block in split), name
            assert [token for block in blocks for token in block] == stream, name
            assert all(sum(block["attention_mask"]) == 16 for block in list(split)[:-1])  # only the last is padded
    # Units extracted again into the same folder are read again, not taken from the cache of the first ones
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for path in sorted(audio.iterdir())[:3]:
        path.rename(fewer / path.name)
    shutil.rmtree(units["txt"])
    extract(source_dir, fewer, units["txt"], layer=layer, features=False, units="codebook")
    _, train, _ = unit_datasets(UnitLMArguments(units=str(units["txt"]), block_size=16, eval_fraction=0.0))
    _, few = read_unit_sequences(units["txt"], deduplicate=True)
    assert sum(sum(block["attention_mask"]) for block in train) == sum(len(source.tokens(u)) for u in few.values())


@pytest.mark.slow
@pytest.mark.parametrize("units_format", ["txt", "parquet"])
def test_units_of_an_unfinished_extraction_are_refused(source_dir, tmp_path, units_format):
    """Shard 0 of 2 done, as an extraction killed midway leaves it: a unit LM would train on part of the files."""
    from spidr_hf.slm.training import UnitLMArguments, unit_datasets

    audio = tmp_path / "audio"
    for index in range(6):
        write_audio(audio / f"f{index}.wav", speech_like(0.4 + index / 20, index, 16000))
    output = tmp_path / "units"
    options = {"features": False, "units": "codebook", "units_format": units_format, "batch_seconds": 1}
    extract(source_dir, audio, output, shard="0/2", **options)
    reason = "no dataset card yet" if units_format == "parquet" else "its shards' units are in"
    with pytest.raises(SpidrError, match=f"The extraction into {output} is not finished \\({reason}") as error:
        unit_datasets(UnitLMArguments(units=str(output)))
    assert "\n" not in str(error.value)
    extract(source_dir, audio, output, shard="1/2", **options)  # the job is done
    _, units = read_unit_sequences(output)
    assert sorted(units) == [f"f{index}" for index in range(6)]


def write_gold(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def lexical_row(id, voice, word, correct, frequency=""):
    filename = f"{id}_{voice}_{correct}"
    return {"id": id, "filename": filename, "voice": voice, "frequency": frequency, "word": word, "phones": "",
            "length": 3, "correct": correct}  # fmt: skip


def test_lexical_accuracy_by_hand(tmp_path):
    # id 1 (frequency 0, "oov"): voice a wins, voice b ties -> 0.75; id 2 (3: band 1-5): both lose -> 0;
    # id 3 (150: >100): one win, one loss -> 0.5; id 4: its non-word of voice b is missing -> voice a alone, a win
    rows, scores = [], {}
    plan = {("1", "a"): (-1, -2), ("1", "b"): (-3, -3), ("2", "a"): (-5, -1), ("2", "b"): (-6, -2),
            ("3", "a"): (-1, -4), ("3", "b"): (-9, -4), ("4", "a"): (-1, -2)}  # fmt: skip
    frequency = {"1": "0", "2": "3", "3": "150", "4": "20"}
    for (id, voice), (word_score, nonword_score) in plan.items():
        for correct, value in (("1", word_score), ("0", nonword_score)):
            row = lexical_row(id, voice, "w" + id, correct, frequency[id] if correct == "1" else "")
            rows.append(row)
            scores[row["filename"]] = value
    rows.append(lexical_row("4", "b", "w4", "1", "20"))  # no pair
    scores[rows[-1]["filename"]] = 0.0
    gold = read_gold(write_gold(tmp_path / "lexical/dev/gold.csv", rows), "lexical")
    accuracy = lexical_accuracy(gold, scores)
    assert accuracy["pairs"] == 4
    assert accuracy["all"] == pytest.approx(100 * (0.75 + 0 + 0.5 + 1) / 4)
    assert accuracy["in_vocab"] == pytest.approx(100 * (0 + 0.5 + 1) / 3)
    assert accuracy["by_frequency"] == {
        "oov": {"n": 1, "score": 75.0},
        "1-5": {"n": 1, "score": 0.0},
        "21-100": {"n": 1, "score": 100.0},
        ">100": {"n": 1, "score": 50.0},
    }


def test_syntactic_accuracy_by_hand(tmp_path):
    rows, scores = [], {}
    plan = {("agreement", "s1", "1", "a"): (-1, -2), ("agreement", "s1", "1", "b"): (-2, -1),
            ("agreement", "s2", "1", "a"): (-1, -1), ("order", "s1", "1", "a"): (-3, -1),
            ("order", "s1", "2", "a"): (-1, -8)}  # fmt: skip
    for (type, subtype, id, voice), (good, bad) in plan.items():
        for correct, value in (("1", good), ("0", bad)):
            filename = f"{type}_{subtype}_{id}_{voice}_{correct}"
            rows.append({"filename": filename, "id": id, "voice": voice, "type": type, "subtype": subtype,
                         "correct": correct, "transcription": "x"})  # fmt: skip
            scores[filename] = value
    gold = read_gold(write_gold(tmp_path / "gold.csv", rows), "syntactic")
    accuracy = syntactic_accuracy(gold, scores)
    # (agreement, s1, 1): 0.5 over its two voices; (agreement, s2, 1): a tie, 0.5; (order, s1, 1): 0; (order, s1, 2): 1
    assert accuracy["all"] == pytest.approx(100 * (0.5 + 0.5 + 0 + 1) / 4)
    assert accuracy["by_type"] == {"agreement": {"n": 2, "score": 50.0}, "order": {"n": 2, "score": 50.0}}
    with pytest.raises(ValueError, match="lacks the column"):
        read_gold(write_gold(tmp_path / "bad.csv", [{"filename": "x", "id": "1"}]), "syntactic")


@pytest.fixture(scope="module")
def slm_benchmark(tmp_path_factory) -> Path:
    """A tiny benchmark in the sLM21 layout: 3 word / non-word pairs and 2 sentence pairs, 2 voices."""
    folder = tmp_path_factory.mktemp("slm")
    lexical, syntactic = [], []
    for voice_index, voice in enumerate(("v1", "v2")):
        for id in range(3):
            for correct in ("1", "0"):
                name = f"lex{id}{voice}{correct}"
                seed = 10 * id + 2 * voice_index + int(correct)
                write_audio(folder / "lexical/dev" / f"{name}.wav", speech_like(0.6 + 0.1 * id, seed, 16000), 16000)
                lexical.append(lexical_row(str(id), voice, f"w{id}", correct, "7" if correct == "1" else ""))
                lexical[-1]["filename"] = name
        for id in range(2):
            for correct in ("1", "0"):
                name = f"syn{id}{voice}{correct}"
                seed = 100 + 10 * id + 2 * voice_index + int(correct)
                write_audio(folder / "syntactic/dev" / f"{name}.wav", speech_like(1.0, seed, 16000), 16000)
                syntactic.append({"filename": name, "id": str(id), "voice": voice, "type": "t", "subtype": "s",
                                  "correct": correct, "transcription": "x"})  # fmt: skip
    write_gold(folder / "lexical/dev/gold.csv", lexical)
    write_gold(folder / "syntactic/dev/gold.csv", syntactic)
    return folder


@pytest.mark.slow
def test_train_then_score_a_unit_lm_end_to_end(source_dir, slm_benchmark, tmp_path, capsys):
    # Units of the lexical and syntactic audio stand in for a training corpus
    units = tmp_path / "units"
    extract(source_dir, slm_benchmark, units, layer=3, features=False, units="codebook", units_format="parquet")
    ulm = tmp_path / "ulm"
    command = [sys.executable, str(ROOT / "training/train_ulm.py"), str(ROOT / "training/configs/ulm_tiny.yaml")]
    overrides = [f"--units={units}", f"--output_dir={ulm}", "--max_steps=4", "--block_size=32", "--eval_fraction=0.2"]
    overrides += ["--per_device_train_batch_size=4", "--save_steps=2", "--model_config.max_position_embeddings=256"]
    completed = subprocess.run([*command, *overrides], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (ulm / "checkpoint-4").is_dir()
    lm = AutoModelForCausalLM.from_pretrained(ulm)
    identity, _ = read_unit_sequences(units, deduplicate=True)
    assert lm_identity(lm.config) == identity and identity.num_units == 16 and identity.deduplicate
    source = UnitVocabulary(identity)

    output = tmp_path / "scores"
    argv = [
        "slm-score",
        str(ulm),
        "--units-model",
        str(source_dir),
        "--data",
        str(slm_benchmark),
        "--output",
        str(output),
    ]
    assert main([*argv, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((output / "scores.json").read_text())
    for task, metric in (("lexical", "swuggy"), ("syntactic", "sblimp")):
        submitted = read_submission(output / "submission" / task / "dev.txt")
        gold = read_gold(slm_benchmark / task / "dev" / "gold.csv", task)
        assert sorted(submitted) == sorted(row["filename"] for row in gold)
        recomputed = (lexical_accuracy if task == "lexical" else syntactic_accuracy)(gold, submitted)
        # the submission folder says what the command printed (beside it: the intervals and the other score)
        assert recomputed == {key: results[metric][key] for key in recomputed}
    assert (
        f"sWUGGY {results['swuggy']['all']:.2f} %" in printed and f"sBLIMP {results['sblimp']['all']:.2f} %" in printed
    )
    assert (output / "submission" / "meta.yaml").is_file()
    # The scores are the LM's log-probabilities of the units of each file: those `spidr-hf extract` gives
    extract(source_dir, slm_benchmark / "lexical/dev", tmp_path / "lexical-units", layer=3, features=False,
            units="codebook", units_format="jsonl")  # fmt: skip
    lm_units = read_unit_sequences(tmp_path / "lexical-units", deduplicate=True)[1]
    name = next(iter(lm_units))
    expected = sequence_log_probs(lm.eval(), [source.tokens(lm_units[name])], source.pad)[0]
    assert read_submission(output / "submission/lexical/dev.txt")[name] == pytest.approx(expected, rel=1e-6)

    # Units of another quantizer (other weights) are refused, naming what differs
    other = tmp_path / "other"
    torch.manual_seed(1)
    SpidrForPreTraining(SpidrConfig.from_pretrained(source_dir)).save_pretrained(other)
    SpidrFeatureExtractor().save_pretrained(other)
    with pytest.raises(ValueError, match=r"trained on other units than .*weights_sha256"):
        score_benchmark(ulm, other, slm_benchmark, tmp_path / "other-scores", device="cpu")
    with pytest.raises(ValueError, match="already holds scores"):
        score_benchmark(ulm, source_dir, slm_benchmark, output, device="cpu")
    # What is not a unit LM is a one-line error: a SpidR folder, a missing folder
    for not_an_lm in (source_dir, tmp_path / "missing"):
        with pytest.raises(ValueError, match=f"Cannot load the unit LM {not_an_lm}"):
            score_benchmark(not_an_lm, source_dir, slm_benchmark, tmp_path / "none", device="cpu")


def test_units_made_in_another_dtype_are_refused_naming_the_dtype(source_dir, slm_benchmark, tmp_path):
    from spidr_hf.units.encoder import SpidrUnitEncoder

    identity = SpidrUnitEncoder.from_pretrained(source_dir, "codebook", device="cpu").identity
    assert identity.dtype == "float32"
    lm = tiny_lm(UnitVocabulary(identity))
    lm.save_pretrained(tmp_path / "ulm")
    with pytest.raises(SpidrError, match=r"other units than .* \(dtype: float32 -> bfloat16; weights_sha256"):
        score_benchmark(tmp_path / "ulm", source_dir, slm_benchmark, tmp_path / "scores", units_dtype="bfloat16")
    # A unit LM of an earlier spidr-hf recorded no dtype: the hash that differs says why
    recorded = lm.config.unit_source
    del recorded["dtype"]
    lm.save_pretrained(tmp_path / "older-ulm")
    with pytest.raises(SpidrError, match=r"in the dtype they run in: bfloat16 here"):
        score_benchmark(tmp_path / "older-ulm", source_dir, slm_benchmark, tmp_path / "scores", units_dtype="bfloat16")


def test_gold_phone_units_train_and_score_like_any_other_units(corpus, tmp_path):
    from spidr_hf.slm.baselines import benchmark_phone_units, corpus_phone_units
    from spidr_hf.slm.benchmark import build_benchmark
    from spidr_hf.units.phones import INVENTORY

    train_units = corpus_phone_units(corpus, tmp_path / "train-units")
    identity, units = read_unit_sequences(train_units, deduplicate=True)
    assert identity.kind == "phones" and identity.num_units == len(INVENTORY) and identity.layer is None
    source = UnitVocabulary(identity)
    from datasets import load_from_disk

    row = load_from_disk(str(corpus))["train"][0]
    spoken = [INVENTORY.index(phone["phone"]) for phone in row["phones"] if phone["phone"] != "pau"]
    assert units[row["id"]].tolist() == spoken

    benchmark = build_benchmark(tmp_path / "benchmark", num_words=3, num_sentences=3, num_voices=1, num_stories=0)
    benchmark_units = benchmark_phone_units(benchmark, tmp_path / "benchmark-units")
    lm = tiny_lm(source)
    lm.save_pretrained(tmp_path / "ulm")
    results = score_benchmark(tmp_path / "ulm", None, benchmark, tmp_path / "scores", units=benchmark_units)
    assert results["swuggy"]["pairs"] == 3 and results["sblimp"]["pairs"] == 3
    # A ULM of other units refuses the phones
    tiny_lm().save_pretrained(tmp_path / "codebook-ulm")
    with pytest.raises(ValueError, match="trained on other units than"):
        score_benchmark(tmp_path / "codebook-ulm", None, benchmark, tmp_path / "other", units=benchmark_units)


def test_log_mel_units_are_the_nearest_centroids_and_score_like_any_other_units(corpus, slm_benchmark, tmp_path):
    from spidr_hf.data.aligned_speech import load_split
    from spidr_hf.data.audio import decode
    from spidr_hf.evaluation.features import log_mel
    from spidr_hf.slm.baselines import benchmark_log_mel_units, corpus_log_mel_units

    kmeans = corpus_log_mel_units(corpus, tmp_path / "train-units", num_clusters=8, max_frames=2000)
    identity, units = read_unit_sequences(tmp_path / "train-units", deduplicate=False)
    assert identity == kmeans.identity and identity.kind == "log_mel" and identity.num_units == 8
    assert identity.layer is None
    row = load_split(corpus, "dev")[0]
    frames = log_mel(row.audio).numpy()
    nearest = ((frames[:, None, :] - kmeans.centroids[None]) ** 2).sum(-1).argmin(1)
    assert units[row.id].tolist() == nearest.tolist() and len(set(nearest.tolist())) > 1
    # Refitted with the same seed: the same quantizer, so its units score with a ULM of the first fit's
    again = corpus_log_mel_units(corpus, tmp_path / "again", num_clusters=8, max_frames=2000)
    assert again.identity == kmeans.identity

    benchmark_units = benchmark_log_mel_units(kmeans, slm_benchmark, tmp_path / "benchmark-units")
    lexical = read_unit_sequences(benchmark_units / "lexical", deduplicate=False)[1]
    assert lexical["lex0v11"].tolist() == again.encode(decode(slm_benchmark / "lexical/dev/lex0v11.wav")).tolist()
    train_identity, _ = read_unit_sequences(tmp_path / "train-units", deduplicate=True)
    tiny_lm(UnitVocabulary(train_identity)).save_pretrained(tmp_path / "ulm")
    results = score_benchmark(tmp_path / "ulm", None, slm_benchmark, tmp_path / "scores", units=benchmark_units)
    assert results["swuggy"]["pairs"] == 3 and results["sblimp"]["pairs"] == 2
    other = corpus_log_mel_units(corpus, tmp_path / "other", num_clusters=8, max_frames=2000, seed=1)
    with pytest.raises(ValueError, match="trained on other units than"):
        score_benchmark(
            tmp_path / "ulm", None, slm_benchmark, tmp_path / "refused",
            units=benchmark_log_mel_units(other, slm_benchmark, tmp_path / "other-benchmark"),
        )  # fmt: skip


def test_text_phones_are_the_phones_flite_speaks_for_the_drawn_sentences(tmp_path):
    import random

    from spidr_hf.data.flite import SPEAKERS, find_flite, phones_of
    from spidr_hf.data.sentences import load_sentences
    from spidr_hf.slm.baselines import text_phone_units
    from spidr_hf.units.phones import PhoneUnitEncoder

    identity, units = read_unit_sequences(text_phone_units(tmp_path / "text", 6, seed=3), deduplicate=True)
    assert identity == PhoneUnitEncoder().identity and len(units) == 6
    sentences = load_sentences()
    random.Random(3).shuffle(sentences)
    flite = find_flite()
    spoken = [PhoneUnitEncoder().encode(phones_of(flite, sentence, SPEAKERS[0])).tolist() for sentence in sentences[:6]]
    assert [values.tolist() for values in units.values()] == spoken
