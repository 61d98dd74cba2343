"""The conventions of transformers' common model tests (ModelTesterMixin, ConfigTester, the HuBERT / wav2vec2 tests)."""

import re

import pytest
import torch
from conftest import TINY_CONFIG
from transformers import PreTrainedModel

from spidr_hf import SpidrConfig, SpidrForPreTraining, SpidrModel, compute_span_mask
from spidr_hf.model.modeling_spidr import HEAD_CLASSES

NO_DROPOUT = {"hidden_dropout": 0.0, "attention_dropout": 0.0, "layerdrop": 0.0}
SAMPLES = 6000  # 18 frames with the tiny config


def tiny_model(seed: int = 0, **overrides) -> SpidrForPreTraining:
    torch.manual_seed(seed)
    return SpidrForPreTraining(SpidrConfig(**{**TINY_CONFIG, **overrides})).eval()


def audio(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, SAMPLES, generator=torch.Generator().manual_seed(seed))


def masks(batch: int = 2, seed: int = 0) -> torch.BoolTensor:
    return compute_span_mask([18] * batch, 18, 0.8, 10, 2, generator=torch.Generator().manual_seed(seed))


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def test_a_config_of_one_keyword_is_valid_and_saves_its_derived_defaults(tmp_path):
    shallow = SpidrConfig(num_hidden_layers=2)
    assert shallow.num_codebooks == 2 and shallow.codebook_layers == (1, 2)
    assert SpidrConfig().num_codebooks == 8  # SpidR base keeps the paper's 8 codebooks
    assert SpidrConfig(num_hidden_layers=1).codebook_layers == (1,)
    shallow.save_pretrained(tmp_path)
    assert SpidrConfig.from_pretrained(tmp_path).to_dict()["num_codebooks"] == 2  # the number, not "derive it"
    # A saved number is kept as it is, even for a config whose depth would derive another
    assert SpidrConfig(num_hidden_layers=12, num_codebooks=3).num_codebooks == 3
    with pytest.raises(ValueError, match=r"`num_codebooks` \(3\) cannot exceed `num_hidden_layers` \(2\)") as error:
        SpidrConfig(num_hidden_layers=2, num_codebooks=3)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_every_parameter_its_gradient(use_reentrant):
    x, mask = audio(), masks()
    expected_model = tiny_model(**NO_DROPOUT).train()
    expected_model(x, mask_time_indices=mask).loss.backward()
    expected = gradients(expected_model)
    model = tiny_model(**NO_DROPOUT).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model(x, mask_time_indices=mask).loss.backward()
    actual = gradients(model)
    assert [name for name, grad in actual.items() if grad is None] == []
    assert actual.keys() == expected.keys()
    for name, grad in actual.items():
        torch.testing.assert_close(grad, expected[name], rtol=0, atol=1e-6, msg=name)
    assert actual["spidr.feature_extractor.conv_layers.0.conv.weight"].abs().sum() > 0


def test_evaluation_forward_without_masks_is_deterministic():
    model = tiny_model()
    x = audio(3)
    with torch.no_grad():
        first, second = model(x), model(x)
        singles = [model(x[row : row + 1]) for row in range(3)]
    for ours, again in zip(first.logits, second.logits, strict=True):
        assert torch.equal(ours, again)
    assert torch.isfinite(first.loss) and torch.equal(first.loss, second.loss)
    assert first.mask_time_indices is None  # nothing masked in evaluation unless asked
    # As in transformers' batching-equivalence test: an item's output does not depend on the rest of its batch
    for row, single in enumerate(singles):
        for ours, alone in zip(first.logits, single.logits, strict=True):
            torch.testing.assert_close(ours[row], alone[0], rtol=0, atol=1e-5)
    # Masks given in evaluation are used; training draws them as before
    mask = masks(3)
    with torch.no_grad():
        assert torch.equal(model(x, mask_time_indices=mask).mask_time_indices, mask)
        trained = model.train()(x)
    assert trained.mask_time_indices is not None and trained.mask_time_indices.any()


def test_return_dict_false_in_the_config_gives_tuples():
    x, mask = audio(), masks()
    model = tiny_model(return_dict=False)
    with torch.no_grad():
        as_tuple = model(x, mask_time_indices=mask)
        as_output = model(x, mask_time_indices=mask, return_dict=True)
        student_tuple = model.spidr(x)
        student_output = model.spidr(x, return_dict=True)
    assert isinstance(as_tuple, tuple) and not isinstance(as_output, tuple)
    expected = as_output.to_tuple()
    assert len(as_tuple) == len(expected)
    assert torch.equal(as_tuple[0], as_output.loss)
    for ours, values in zip(as_tuple, expected, strict=True):
        if isinstance(values, torch.Tensor):
            assert torch.equal(ours, values)
    assert isinstance(student_tuple, tuple) and not isinstance(student_output, tuple)
    assert torch.equal(student_tuple[0], student_output.last_hidden_state)
    # The methods built on the forward still work
    assert model.get_units(x).shape == (2, 18)
    assert len(model.get_codebook_probs(x)) == TINY_CONFIG["num_hidden_layers"]
    assert model.represent(x, layers=[1]).features[1][0].shape == (18, TINY_CONFIG["hidden_size"])


@pytest.mark.parametrize("model_class", [SpidrForPreTraining, SpidrModel])
def test_config_output_flags_return_hidden_states_and_attentions_that_retain_grad(model_class):
    torch.manual_seed(0)
    config = SpidrConfig(**TINY_CONFIG, output_hidden_states=True, output_attentions=True, attn_implementation="eager")
    model = model_class(config).eval()
    x = audio()
    output = model(x, mask_time_indices=masks()) if model_class is SpidrForPreTraining else model(x)
    layers = TINY_CONFIG["num_hidden_layers"]
    assert len(output.hidden_states) == layers + 1 and len(output.attentions) == layers
    hidden_states, attentions = output.hidden_states[0], output.attentions[0]
    hidden_states.retain_grad()
    attentions.retain_grad()
    output[0].flatten()[0].backward()  # the loss, or the first student output, as in test_retain_grad_...
    assert hidden_states.grad is not None and attentions.grad is not None
    assert hidden_states.grad.abs().sum() > 0 and attentions.grad.abs().sum() > 0
    # An explicit False still wins over the config
    with torch.no_grad():
        quiet = model(x, output_hidden_states=False, output_attentions=False)
    assert quiet.hidden_states is None and quiet.attentions is None


def test_freeze_feature_encoder_of_the_pretraining_model():
    model = tiny_model(**NO_DROPOUT).train()
    model.freeze_feature_encoder()
    model(audio(), mask_time_indices=masks()).loss.backward()
    frozen = [*model.spidr.feature_extractor.parameters(), *model.spidr.feature_projection.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    assert not any(p.requires_grad for p in model.teacher.parameters())  # the EMA teacher is never trained
    trained = {
        "attention": model.spidr.encoder.layers[0].attention.qkv_proj.weight,
        "positional convolution": model.spidr.encoder.pos_conv_embed.layers[0].conv.weight,
        "head": model.heads[0].weight,
        "mask embedding": model.mask_embedding,
    }
    for name, parameter in trained.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_forward_after_casting_to_bfloat16(training):
    model = tiny_model(**NO_DROPOUT).to(torch.bfloat16).train(training)
    x, mask = audio(), masks()
    output = model(x, mask_time_indices=mask)
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)
    assert output.logits[0].shape == (2, 18, TINY_CONFIG["codebook_size"])
    output.loss.backward()
    assert model.heads[0].weight.grad is not None
    assert torch.isfinite(model.codebooks.codewords()).all()
    # Units of the cast model are those of its fp32 twin on most frames
    model.eval()
    with torch.no_grad():
        units = model.get_units(x)
        exact = tiny_model(**NO_DROPOUT).get_units(x)
    assert (units == exact).float().mean() >= 0.8


# Where each class keeps fp32 whatever dtype it is loaded or built in: the pretraining state, and k-means centroids
FP32_PREFIXES = {"SpidrForPreTraining": ("teacher.", "codebooks.", "heads.")}
HEAD_KWARGS = {"vocab_size": 12, "pad_token_id": 0, "tdnn_dim": (16, 16), "tdnn_kernel": (3, 1)}
HEAD_KWARGS["tdnn_dilation"] = (1, 1)


@pytest.mark.parametrize(
    "model_class",
    [SpidrModel, SpidrForPreTraining, *HEAD_CLASSES.values()],
    ids=lambda model_class: model_class.__name__,
)
def test_each_class_keeps_its_own_modules_in_fp32_whatever_the_dtype_asked(model_class, tmp_path):
    """
    transformers' `_keep_in_fp32_modules_strict` convention: each class names only modules it has, and creates them in
    fp32, so that `_from_config(config, dtype=...)` gives the dtypes that `from_pretrained(..., dtype=...)` does.
    """
    torch.manual_seed(0)
    config = SpidrConfig(**TINY_CONFIG, **HEAD_KWARGS)
    source = SpidrForPreTraining(config)
    source.spidr.set_kmeans_centroids(2, torch.randn(5, TINY_CONFIG["hidden_size"]))
    source.save_pretrained(tmp_path)
    config = SpidrConfig.from_pretrained(tmp_path)
    kmeans = "kmeans." if model_class is SpidrModel else "spidr.kmeans."
    fp32_prefixes = (*FP32_PREFIXES.get(model_class.__name__, ()), kmeans)
    for dtype in (torch.float16, torch.bfloat16):
        for how, model in (
            ("_from_config", model_class._from_config(config, dtype=dtype)),
            ("from_pretrained", model_class.from_pretrained(tmp_path, dtype=dtype)),
        ):
            state = model.state_dict()
            for module in model._keep_in_fp32_modules_strict:  # transformers' test_keep_in_fp32_modules_exist
                assert any(re.search(rf"(?:^|\.){module}\.", name) for name in state), (how, module)
            wrong = {
                name: tensor.dtype
                for name, tensor in state.items()
                if tensor.dtype != (torch.float32 if name.startswith(fp32_prefixes) else dtype)
            }
            assert not wrong, (how, dtype, wrong)


def test_both_ways_of_building_a_model_give_the_same_buffers(monkeypatch):
    """
    transformers' test_init_weights_can_init_buffers: a buffer is what `__init__` makes it, whether `init_weights` runs
    after it or after a build on the meta device (no random state in buffers), and a model built the usual way has it.
    """
    config = SpidrConfig(**TINY_CONFIG, kmeans_layer=2, kmeans_num_clusters=3)
    torch.manual_seed(0)
    built = dict(SpidrForPreTraining(config).named_buffers())
    with monkeypatch.context() as patch:
        patch.setattr(PreTrainedModel, "_initialize_weights", lambda *args, **kwargs: None)
        from_init = dict(SpidrForPreTraining(config).named_buffers())
    with torch.device("meta"):
        meta = SpidrForPreTraining(config)
    meta.to_empty(device="cpu")
    meta.init_weights()
    from_meta = dict(meta.named_buffers())
    assert built.keys() == from_init.keys() == from_meta.keys()
    for name, buffer in built.items():
        for other in (from_init[name], from_meta[name]):
            torch.testing.assert_close(other, buffer, rtol=0, atol=0, equal_nan=True, msg=name)
    # Still the paper's random codewords: each dimension standardized over the codewords, others for another seed
    codebook = built["codebooks.codebook"]
    torch.testing.assert_close(codebook.mean(1), torch.zeros(()).expand(codebook.mean(1).shape), rtol=0, atol=1e-5)
    variance = codebook.var(1, unbiased=False)  # 1 less the instance norm's epsilon
    torch.testing.assert_close(variance, torch.ones(()).expand(variance.shape), rtol=0, atol=1e-4)
    torch.manual_seed(1)
    assert not torch.equal(SpidrForPreTraining(config).codebooks.codebook, codebook)


def test_the_design_map_names_every_module():
    """docs/design.md's layout table lists every module of the package and the command line, and no other: the map a
    newcomer reads stays true."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    design = (root / "docs" / "design.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1] for line in design[design.index("## Layout") :].splitlines() if line.startswith("| `")]
    named = {name.removeprefix("spidr_hf/") for row in rows for name in re.findall(r"`([\w/]+\.py)`", row)}
    modules = set()
    for package in ("spidr_hf", "spidr_hf_cli"):
        for path in (root / "src" / package).rglob("*.py"):
            relative = path.relative_to(root / "src" / package).as_posix()
            only_a_docstring = not re.search(r"^(from|import|def|class|\w+ =)", path.read_text(), re.MULTILINE)
            if not (path.name == "__init__.py" and only_a_docstring):  # a package's folder, with nothing of its own
                modules.add(relative if package == "spidr_hf" else f"{package}/{relative}")
    assert sorted(modules - named) == [], "modules that docs/design.md's layout does not name"
    assert sorted(named - modules) == [], "modules that docs/design.md's layout names but do not exist"
