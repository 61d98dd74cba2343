"""Behaviour of the model classes beyond reference parity: padding, saving, remote code, attention, init, dtypes."""

import ast
import json
import logging
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import SAVED_AUTO_MAP, TINY_CONFIG
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining, SpidrModel, compute_span_mask
from spidr_hf.model.modeling_spidr import SpidrPreTrainedModel

TOLERANCE = 1e-4


def tiny_model(seed: int = 0, **overrides) -> SpidrForPreTraining:
    torch.manual_seed(seed)
    return SpidrForPreTraining(SpidrConfig(**{**TINY_CONFIG, **overrides})).eval()


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Random utterances, and the same utterances zero-padded with an attention mask."""
    generator = torch.Generator().manual_seed(seed)
    items = [torch.randn(n, generator=generator) for n in lengths]
    batch = torch.zeros(len(items), max(lengths))
    mask = torch.zeros(len(items), max(lengths), dtype=torch.long)
    for row, item in enumerate(items):
        batch[row, : len(item)] = item
        mask[row, : len(item)] = 1
    return items, batch, mask


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


@pytest.mark.parametrize(
    "overrides",
    [{}, {"feat_extract_norm": "group"}, {"do_stable_layer_norm": True}, {"objective": "dinosr"}],
    ids=["layer-norm", "group-norm", "pre-ln", "dinosr"],
)
def test_padded_batch_equals_single_items(overrides):
    model = tiny_model(**overrides)
    items, batch, attention_mask = padded_batch([7000, 4100, 2500])
    with torch.no_grad():
        batched = model.spidr(batch, attention_mask, output_hidden_states=True, output_layer_results=True)
    batched_probs = model.get_codebook_probs(batch, attention_mask)
    batched_units = model.get_units(batch, attention_mask, layer=4)
    for row, item in enumerate(items):
        frames = model.spidr._get_feat_extract_output_lengths(len(item)).item()
        with torch.no_grad():
            single = model.spidr(item[None], output_hidden_states=True, output_layer_results=True)
        assert max_diff(batched.last_hidden_state[row, :frames], single.last_hidden_state[0]) <= TOLERANCE
        assert max_diff(batched.extract_features[row, :frames], single.extract_features[0]) <= TOLERANCE
        for ours, expected in zip(batched.hidden_states, single.hidden_states, strict=True):
            assert max_diff(ours[row, :frames], expected[0]) <= TOLERANCE
        for ours, expected in zip(batched.layer_results, single.layer_results, strict=True):
            assert max_diff(ours[row, :frames], expected[0]) <= TOLERANCE
        for ours, expected in zip(batched_probs, model.get_codebook_probs(item[None]), strict=True):
            if expected is not None:
                assert max_diff(ours[row, :frames], expected[0]) <= TOLERANCE
                assert torch.all(ours[row, frames:] == 0)
        units = model.get_units(item[None], layer=4)[0]
        assert torch.equal(batched_units[row, :frames], units)
        assert torch.all(batched_units[row, frames:] == -1)


@pytest.mark.parametrize("overrides", [{}, {"feat_extract_norm": "group", "objective": "dinosr"}])
def test_padded_pretraining_loss_is_the_frame_weighted_mean_of_single_losses(overrides):
    """Targets are normalized over each utterance's valid frames only, so padding does not change them."""
    model = tiny_model(**overrides)
    items, batch, attention_mask = padded_batch([6000, 3900], seed=1)
    frames = [model.spidr._get_feat_extract_output_lengths(len(item)).item() for item in items]
    masks = [
        compute_span_mask([n], n, 0.8, 10, 2, generator=torch.Generator().manual_seed(i)) for i, n in enumerate(frames)
    ]
    batch_mask = torch.zeros(2, max(frames), dtype=torch.bool)
    for row, mask in enumerate(masks):
        batch_mask[row, : frames[row]] = mask[0]
    with torch.no_grad():
        batched = model(batch, attention_mask, mask_time_indices=batch_mask)
        singles = [model(item[None], mask_time_indices=mask) for item, mask in zip(items, masks, strict=True)]
    counts = [mask.sum().item() for mask in masks]
    expected = sum(s.loss.item() * c for s, c in zip(singles, counts, strict=True)) / sum(counts)
    assert batched.loss.item() == pytest.approx(expected, abs=TOLERANCE)


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    x = torch.randn(2, 6000)
    model.save_pretrained(tmp_path)
    loaded = SpidrForPreTraining.from_pretrained(tmp_path).eval()
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(expected, actual), name
    assert not any(p.requires_grad for p in loaded.teacher.parameters())
    assert not loaded.spidr.encoder.layers[-1].final_layer_norm.weight.requires_grad
    assert loaded.spidr.encoder.layers[-1].feed_forward.output_dense.weight.requires_grad
    with torch.no_grad():
        assert torch.equal(model.spidr(x).last_hidden_state, loaded.spidr(x).last_hidden_state)
        assert torch.equal(model.get_units(x, layer=3), loaded.get_units(x, layer=3))
    student = AutoModel.from_pretrained(tmp_path).eval()
    assert type(student) is SpidrModel
    with torch.no_grad():
        assert torch.equal(student(x).last_hidden_state, model.spidr(x).last_hidden_state)


def test_auto_classes_are_registered(tmp_path):
    config = SpidrConfig(**TINY_CONFIG)
    assert type(AutoConfig.for_model("spidr")) is SpidrConfig
    assert type(AutoModel.from_config(config)) is SpidrModel
    assert type(AutoModelForPreTraining.from_config(config)) is SpidrForPreTraining
    SpidrFeatureExtractor().save_pretrained(tmp_path)
    config.save_pretrained(tmp_path)
    assert type(AutoFeatureExtractor.from_pretrained(tmp_path)) is SpidrFeatureExtractor


REMOTE_CODE_SCRIPT = """
import importlib.abc, sys

class BlockSpidrHf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "spidr_hf":
            raise ModuleNotFoundError("spidr_hf is hidden in this test")

sys.meta_path.insert(0, BlockSpidrHf())
import torch
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

folder, expected_path = sys.argv[1], sys.argv[2]
expected = torch.load(expected_path)
extractor = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
student = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
full = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
for obj in (extractor, student, full):
    assert type(obj).__module__.startswith("transformers_modules"), type(obj).__module__
inputs = extractor([expected["audio"].numpy()], sampling_rate=16000, return_tensors="pt")
with torch.no_grad():
    hidden = student(**inputs).last_hidden_state
units = full.get_units(**inputs, layer=3)
assert (hidden - expected["hidden"]).abs().max() <= 1e-5
assert torch.equal(units, expected["units"])
assert not any(name.startswith("spidr_hf") for name in sys.modules)
print("remote code OK")
"""


@pytest.mark.slow
def test_saved_folder_loads_with_remote_code_without_the_package(tmp_path):
    model = tiny_model()
    folder = tmp_path / "release"
    model.save_pretrained(folder)
    extractor = SpidrFeatureExtractor()
    extractor.save_pretrained(folder)
    audio = torch.randn(5000)
    inputs = extractor([audio.numpy()], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        expected = {"audio": audio, "hidden": model.spidr(**inputs).last_hidden_state}
    expected["units"] = model.get_units(**inputs, layer=3)
    torch.save(expected, tmp_path / "expected.pt")

    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == SAVED_AUTO_MAP
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_spidr.SpidrFeatureExtractor"}
    for code_file in ("configuration_spidr.py", "modeling_spidr.py", "feature_extraction_spidr.py"):
        assert_imports_only_torch_transformers(folder / code_file)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(folder), str(tmp_path / "expected.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code OK" in result.stdout


def assert_imports_only_torch_transformers(path) -> None:
    """Remote-code files may import the standard library, torch, transformers, numpy and each other (relatively)."""
    allowed = {"torch", "transformers", "numpy", *sys.stdlib_module_names}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:
                assert node.level == 1, f"{path.name}: only single-dot relative imports"
                continue
            roots = {node.module.split(".")[0]}
        else:
            continue
        assert roots <= allowed, f"{path.name} imports {roots - allowed}"


# The attention implementations run against eager attention below: the model must declare exactly these
TESTED_ATTENTION = ("sdpa", "flex_attention")
FLEX_ATTENTION_MARKS = [
    pytest.mark.slow,  # inductor compiles flex attention on first use: 10 s to over a minute on a small CPU
    # transformers' block mask (`_compile=True`) and inductor (`torch.jit`) use APIs that torch deprecates
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def test_only_tested_attention_implementations_are_declared():
    declared = {
        "sdpa": SpidrPreTrainedModel._supports_sdpa,
        "flash_attention_2": SpidrPreTrainedModel._supports_flash_attn,
        "flex_attention": SpidrPreTrainedModel._supports_flex_attn,
    }
    assert {name for name, supported in declared.items() if supported} == set(TESTED_ATTENTION)


@pytest.mark.parametrize(
    "implementation",
    [pytest.param(name, marks=FLEX_ATTENTION_MARKS) if name == "flex_attention" else name for name in TESTED_ATTENTION],
)
def test_attention_implementations_agree_with_eager_attention(implementation):
    _, batch, mask = padded_batch([7000, 4100, 2500])
    outputs = {}
    for name in ("eager", implementation):
        torch.manual_seed(0)
        model = SpidrModel(SpidrConfig(**TINY_CONFIG, attn_implementation=name)).eval()
        assert model.config._attn_implementation == name
        with torch.no_grad():
            outputs[name] = (model(batch, output_hidden_states=True), model(batch, mask, output_hidden_states=True))
    frames = model._get_feat_extract_output_lengths(mask.sum(-1)).tolist()
    unpadded, padded = outputs[implementation]
    eager_unpadded, eager_padded = outputs["eager"]
    for ours, eager in zip(unpadded.hidden_states, eager_unpadded.hidden_states, strict=True):
        assert max_diff(ours, eager) <= 1e-5
    for ours, eager in zip(padded.hidden_states, eager_padded.hidden_states, strict=True):
        for row, valid in enumerate(frames):  # padded frames are free to differ
            assert max_diff(ours[row, :valid], eager[row, :valid]) <= 1e-5


def test_attention_weights_need_eager_attention(caplog):
    x = torch.randn(1, 5000)
    torch.manual_seed(0)
    eager = SpidrModel(SpidrConfig(**TINY_CONFIG, attn_implementation="eager")).eval()
    attentions = eager(x, output_attentions=True).attentions
    frames = eager._get_feat_extract_output_lengths(5000).item()
    assert len(attentions) == TINY_CONFIG["num_hidden_layers"]
    assert attentions[0].shape == (1, TINY_CONFIG["num_attention_heads"], frames, frames)
    assert torch.allclose(attentions[0].sum(-1), torch.ones(()))
    # Under SDPA, as transformers' models: the outputs without weights, and a warning (once) that says how to get them
    sdpa = SpidrModel(SpidrConfig(**TINY_CONFIG, attn_implementation="sdpa")).eval()
    logging.Logger.warning_once.cache_clear()  # another test may have had it said already
    with caplog.at_level(logging.WARNING), torch.no_grad():
        asked = sdpa(x, output_attentions=True, output_hidden_states=True)
        plain = sdpa(x, output_hidden_states=True)
    assert asked.attentions in (None, ())
    assert "attn_implementation='eager'" in caplog.text
    for with_weights_asked, without in zip(asked.hidden_states, plain.hidden_states, strict=True):
        assert torch.equal(with_weights_asked, without)
    assert torch.equal(asked.last_hidden_state, plain.last_hidden_state)


def test_hidden_states_by_layer_index():
    model = tiny_model().spidr
    x = torch.randn(1, 5000)
    with torch.no_grad():
        everything = model(x, output_hidden_states=True).hidden_states
        selected = model(x, output_hidden_states=[0, 2, -1]).hidden_states
    assert len(selected) == len(everything) == TINY_CONFIG["num_hidden_layers"] + 1
    for index, hidden in enumerate(selected):
        if index in (0, 2, 4):
            assert torch.equal(hidden, everything[index])
        else:
            assert hidden is None


def test_return_dict_false_gives_tuples():
    model = tiny_model()
    x = torch.randn(1, 5000)
    with torch.no_grad():
        as_tuple = model.spidr(x, return_dict=False)
        as_output = model.spidr(x)
        loss_tuple = model(x, mask_time_indices=torch.ones(1, 15, dtype=torch.bool), return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_output.last_hidden_state)
    assert isinstance(loss_tuple, tuple) and loss_tuple[0].ndim == 0


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    x = torch.randn(2, 6000)
    mask = compute_span_mask([18, 18], 18, 0.8, 10, 2, generator=torch.Generator().manual_seed(0))
    results = []
    for checkpointing in (False, True):
        model = tiny_model(hidden_dropout=0.0, attention_dropout=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = model(x, mask_time_indices=mask).loss
        loss.backward()
        results.append((loss.item(), model.spidr.encoder.layers[0].attention.qkv_proj.weight.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert max_diff(results[0][1], results[1][1]) <= 1e-6


@pytest.mark.slow
def test_initialisation_follows_the_paper():
    model = SpidrForPreTraining(SpidrConfig())  # base size: enough samples for the statistics
    layer = model.spidr.encoder.layers[0]
    assert layer.feed_forward.intermediate_dense.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(layer.feed_forward.intermediate_dense.bias == 0)
    qkv_bound = (1 / math.sqrt(2)) * math.sqrt(6 / (768 + 3 * 768))
    assert layer.attention.qkv_proj.weight.abs().max().item() <= qkv_bound
    assert layer.attention.qkv_proj.weight.std().item() == pytest.approx(qkv_bound / math.sqrt(3), rel=0.05)
    assert torch.all(layer.attention.out_proj.bias == 0)
    conv = model.spidr.feature_extractor.conv_layers[1].conv.weight
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (512 * 3)), rel=0.05)  # Kaiming normal, fan-in
    projection = model.spidr.feature_projection.projection.weight
    assert projection.abs().max().item() <= 1 / math.sqrt(512)  # PyTorch's default Linear init
    assert model.mask_embedding.min().item() >= 0 and model.mask_embedding.max().item() < 1
    assert torch.all(layer.layer_norm.weight == 1) and torch.all(layer.layer_norm.bias == 0)
    # The teacher is drawn anew, except its positional convolution which starts as the student's
    teacher_layer = model.teacher.layers[0]
    assert not torch.equal(teacher_layer.attention.qkv_proj.weight, layer.attention.qkv_proj.weight)
    for teacher_param, student_param in zip(
        model.teacher.pos_conv_embed.parameters(), model.spidr.encoder.pos_conv_embed.parameters(), strict=True
    ):
        assert torch.equal(teacher_param, student_param)
    codebook = model.codebooks.codebook
    assert codebook.shape == (8, 256, 768)
    assert codebook.mean(1).abs().max().item() < 1e-5  # each dimension standardized over the codewords
    assert codebook.var(1, unbiased=False).sub(1).abs().max().item() < 1e-3
    assert torch.all(model.codebooks.counts == 1)


def test_bf16_autocast_keeps_targets_and_codebooks_in_fp32(tmp_path):
    model = tiny_model().train()
    x = torch.randn(2, 6000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(x)
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)
    assert model.codebooks.codebook.dtype == torch.float32
    model.save_pretrained(tmp_path)
    loaded = SpidrForPreTraining.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.spidr.encoder.layers[0].attention.qkv_proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in loaded.teacher.parameters())
    assert loaded.codebooks.codebook.dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(loaded(x).loss)  # half-precision student, fp32 teacher, no autocast


def test_teacher_stays_in_eval_mode():
    model = tiny_model().train()
    assert model.training and model.spidr.training
    assert not model.teacher.training


def test_units_stop_early_and_match_the_head_argmax():
    model = tiny_model()
    x = torch.randn(2, 6000)
    probabilities = model.get_codebook_probs(x)
    for layer in model.config.codebook_layers:
        assert torch.equal(model.get_units(x, layer=layer), probabilities[layer - 1].argmax(-1))
    with pytest.raises(ValueError, match="no codebook head"):
        model.get_units(x, layer=1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 100}, "num_attention_heads"),
        ({"num_codebooks": 13}, "cannot exceed"),
        ({"objective": "hubert"}, "objective"),
        ({"feat_extract_norm": "batch"}, "feat_extract_norm"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"codebook_size": -1}, "codebook_size"),
        ({"hidden_dropout": 1.5}, "hidden_dropout"),
        ({"mask_time_prob": -0.1}, "mask_time_prob"),
        ({"layerdrop": float("nan")}, "layerdrop"),
        ({"conv_kernel": (10, 3)}, "equal length"),
        ({"num_conv_pos_embedding_groups": 5}, "num_conv_pos_embedding_groups"),
        ({"freeze_step": -1}, "freeze_step"),
    ],
)
def test_invalid_config_values_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        SpidrConfig(**overrides)


def test_dinosr_preset():
    config = SpidrConfig.dinosr_base()
    assert config.objective == "dinosr" and config.layerdrop == 0.05
    assert SpidrConfig().objective == "spidr" and SpidrConfig().layerdrop == 0.0
    assert SpidrConfig().receptive_field == 400 and SpidrConfig().inputs_to_logits_ratio == 320


def test_model_input_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        model.spidr(torch.randn(5000))
    with pytest.raises(ValueError, match="receptive field"):
        model.spidr(torch.randn(1, 399))
    with pytest.raises(ValueError, match="floating-point"):
        model.spidr(torch.ones(1, 5000, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model.spidr(torch.randn(2, 5000), torch.ones(2, 4000))
    with pytest.raises(ValueError, match="mask_time_indices"):
        model(torch.randn(1, 5000), mask_time_indices=torch.ones(1, 3, dtype=torch.bool))


def test_feature_extractor_standardizes_each_utterance_over_its_samples():
    extractor = SpidrFeatureExtractor()
    generator = torch.Generator().manual_seed(0)
    a, b = 3 + 2 * torch.randn(4000, generator=generator), torch.randn(1000, generator=generator)
    batch = extractor([a.numpy(), b.numpy()], sampling_rate=16000, return_tensors="pt")
    assert batch["input_values"].shape == (2, 4000) and batch["input_values"].dtype == torch.float32
    assert batch["attention_mask"].tolist() == [[1] * 4000, [1] * 1000 + [0] * 3000]
    for row, item in enumerate((a, b)):
        expected = torch.nn.functional.layer_norm(item, item.shape)  # (x - mean) / sqrt(var + 1e-5)
        assert max_diff(batch["input_values"][row, : len(item)], expected) <= 1e-5
    assert torch.all(batch["input_values"][1, 1000:] == 0)
    single = extractor(a, sampling_rate=16000, return_tensors="pt")
    assert torch.equal(single["input_values"][0], batch["input_values"][0])
    from_tensor = extractor(torch.stack([a, a]), sampling_rate=16000, return_tensors="pt")
    assert from_tensor["input_values"].shape == (2, 4000)
    assert "attention_mask" not in extractor(a, sampling_rate=16000, return_attention_mask=False)


@pytest.mark.parametrize(
    ("audio", "kwargs", "message"),
    [
        (torch.randn(4000).numpy(), {"sampling_rate": 44100}, "16000 Hz"),
        ([torch.randn(2, 4000).numpy()], {"sampling_rate": 16000}, "mono"),
        (torch.randn(2, 2, 4000).numpy(), {"sampling_rate": 16000}, "downmixed"),
        (torch.randn(4000, 2).numpy(), {"sampling_rate": 16000}, "receptive field"),
        (torch.randn(399).numpy(), {"sampling_rate": 16000}, "399 samples"),
        (torch.full((4000,), float("nan")).numpy(), {"sampling_rate": 16000}, "NaN"),
        (torch.full((4000,), float("inf")).numpy(), {"sampling_rate": 16000}, "infinite"),
        ([], {"sampling_rate": 16000}, "empty"),
        ([torch.zeros(0).numpy()], {"sampling_rate": 16000}, "empty"),
        ("audio.wav", {"sampling_rate": 16000}, "numpy array"),
    ],
)
def test_feature_extractor_rejects_bad_audio(audio, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpidrFeatureExtractor()(audio, **kwargs)


CODEBOOK_WORKER = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from conftest import SAVED_AUTO_MAP, TINY_CONFIG
    from spidr_hf import SpidrConfig
    from spidr_hf.model.modeling_spidr import SpidrCodebooks

    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="file://" + {store!r}, rank=rank, world_size=2)
    torch.manual_seed(0)
    codebooks = SpidrCodebooks(SpidrConfig(**TINY_CONFIG))
    codebooks.codebook.copy_(codebooks.initial_codebook())
    targets = torch.load({targets!r})[rank]
    labels = codebooks.assign(targets)
    onehot = torch.nn.functional.one_hot(labels, codebooks.counts.shape[1]).float()
    codebooks.update(targets, onehot)
    torch.save({{"codebook": codebooks.codebook, "counts": codebooks.counts}}, {out!r} + str(rank))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_codebook_update_is_summed_over_processes(tmp_path):
    from spidr_hf.model.modeling_spidr import SpidrCodebooks

    targets = torch.randn(2, 2, 30, TINY_CONFIG["hidden_size"])  # (rank, codebook, frames, hidden)
    torch.save(targets, tmp_path / "targets.pt")
    script = CODEBOOK_WORKER.format(
        tests=os.path.dirname(__file__),
        store=str(tmp_path / "store"),
        targets=str(tmp_path / "targets.pt"),
        out=str(tmp_path / "rank"),
    )
    workers = [subprocess.Popen([sys.executable, "-c", script, str(rank)], stderr=subprocess.PIPE) for rank in (0, 1)]
    try:
        # communicate, not wait: a worker that fills the stderr pipe would block until the timeout
        errors = [worker.communicate(timeout=300)[1] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()  # the other waits in gloo's rendezvous for 30 minutes when one fails; no-op once ended
    for worker, error in zip(workers, errors, strict=True):
        assert worker.returncode == 0, error.decode()[-3000:]
    # One process seeing both ranks' targets must end in the same state
    torch.manual_seed(0)
    single = SpidrCodebooks(SpidrConfig(**TINY_CONFIG))
    single.codebook.copy_(single.initial_codebook())
    labels = torch.cat([single.assign(targets[0]), single.assign(targets[1])], dim=1)
    onehot = torch.nn.functional.one_hot(labels, single.counts.shape[1]).float()
    single.update(torch.cat([targets[0], targets[1]], dim=1), onehot)
    for rank in (0, 1):
        state = torch.load(tmp_path / f"rank{rank}")
        assert max_diff(state["codebook"], single.codebook) <= 1e-5
        assert max_diff(state["counts"], single.counts) <= 1e-5
    assert not torch.equal(single.counts, torch.ones_like(single.counts))
