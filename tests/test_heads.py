"""The fine-tuning heads: CTC, utterance and frame classification, x-vectors (wav2vec2's family of heads)."""

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TINY_CONFIG
from safetensors.torch import load_file
from transformers import (
    AutoModelForAudioClassification,
    AutoModelForAudioFrameClassification,
    AutoModelForAudioXVector,
    AutoModelForCTC,
)

from spidr_hf import (
    SpidrConfig,
    SpidrForAudioFrameClassification,
    SpidrForCTC,
    SpidrForPreTraining,
    SpidrForSequenceClassification,
    SpidrForXVector,
    SpidrModel,
)

NO_DROPOUT = {"hidden_dropout": 0.0, "attention_dropout": 0.0, "layerdrop": 0.0, "final_dropout": 0.0}
HEAD_SETTINGS = {
    "vocab_size": 7,
    "pad_token_id": 0,
    "num_labels": 3,
    "tdnn_dim": (16, 16, 24),
    "tdnn_kernel": (3, 3, 1),
}
HEAD_SETTINGS |= {"tdnn_dilation": (1, 2, 1), "xvector_output_dim": 12, "classifier_proj_size": 8}
HEADS = [SpidrForCTC, SpidrForSequenceClassification, SpidrForAudioFrameClassification, SpidrForXVector]
AUTO_CLASSES = {
    SpidrForCTC: AutoModelForCTC,
    SpidrForSequenceClassification: AutoModelForAudioClassification,
    SpidrForAudioFrameClassification: AutoModelForAudioFrameClassification,
    SpidrForXVector: AutoModelForAudioXVector,
}
SAMPLES = 8000  # 24 frames with the tiny config


def head_config(**overrides) -> SpidrConfig:
    return SpidrConfig(**{**TINY_CONFIG, **NO_DROPOUT, **HEAD_SETTINGS, **overrides})


def tiny_head(head_class, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return head_class(head_config(**overrides)).eval()


def audio(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, SAMPLES, generator=torch.Generator().manual_seed(seed))


def labels_for(head_class, batch: int = 2, frames: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if head_class is SpidrForCTC:
        return torch.tensor([[1, 2, 3, 4, 5], [6, 2, 6, -100, -100]])[:batch]
    if head_class is SpidrForAudioFrameClassification:
        return torch.randint(0, 3, (batch, frames), generator=generator)
    return torch.arange(batch) % 3


def main_output(output) -> torch.Tensor:
    return output.embeddings if hasattr(output, "embeddings") else output.logits


@pytest.mark.parametrize("head_class", HEADS, ids=lambda c: c.__name__)
def test_a_head_loads_the_student_of_a_pretraining_folder_and_initialises_itself(head_class, source_dir, caplog):
    from transformers.utils import logging

    logging.set_verbosity_warning()
    try:
        head = head_class.from_pretrained(source_dir, **NO_DROPOUT, **HEAD_SETTINGS).eval()
    finally:
        logging.set_verbosity_error()
    assert "its teacher, codebooks, codebook heads and mask embedding are left out" in caplog.text
    assert "teacher." not in caplog.text and "UNEXPECTED" not in caplog.text  # no warning per dropped tensor
    saved = load_file(source_dir / "model.safetensors")
    student = {name: value for name, value in saved.items() if name.startswith("spidr.")}
    ours = head.state_dict()
    for name, value in student.items():
        assert torch.equal(ours[name], value), name
    new = {name: value for name, value in ours.items() if not name.startswith("spidr.")}
    assert new and all(torch.isfinite(value).all() for value in new.values())
    weights = [value for name, value in new.items() if name.endswith("weight") and value.dim() == 2]
    assert all(0.0 < value.std() < 1.5 for value in weights)  # drawn, not left at zeros or memory
    assert torch.isfinite(main_output(head(audio()))).all()


@pytest.mark.parametrize("head_class", HEADS, ids=lambda c: c.__name__)
def test_padded_items_give_what_they_give_alone(head_class):
    head = tiny_head(head_class, feat_extract_norm="group")
    long, short = audio(1, 0)[0], audio(1, 1)[0, :5000]
    batch = torch.stack([long, torch.cat([short, torch.zeros(SAMPLES - 5000)])])
    attention_mask = torch.ones(2, SAMPLES, dtype=torch.long)
    attention_mask[1, 5000:] = 0
    with torch.no_grad():
        together = main_output(head(batch, attention_mask=attention_mask))
        alone = [main_output(head(item[None])) for item in (long, short)]
    if head_class in (SpidrForCTC, SpidrForAudioFrameClassification):  # a row per frame: the valid ones
        torch.testing.assert_close(together[0], alone[0][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(together[1, : alone[1].shape[1]], alone[1][0], rtol=0, atol=1e-5)
    else:  # pooled over the valid frames only
        torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-5)


@pytest.mark.parametrize("head_class", HEADS, ids=lambda c: c.__name__)
def test_a_head_learns_its_labels(head_class):
    """Steps on one batch fit it: the loss falls, and the classifiers' predictions become the labels."""
    head = tiny_head(head_class).train()
    head.freeze_feature_encoder()
    # Two noises have the same statistics over time, which pooled heads cannot tell apart: a noise and a tone
    tone = 1.4 * torch.sin(2 * math.pi * 220 * torch.arange(SAMPLES) / 16000)
    x, labels = torch.stack([audio(1)[0], tone]), labels_for(head_class)
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):
        loss = head(x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    if head_class is SpidrForCTC:  # CTC first learns blanks: fitting the sequences takes hundreds of steps
        return
    head.eval()
    with torch.no_grad():
        logits = head(x).logits
    if head_class is SpidrForXVector:  # the AM-softmax classifier: each embedding nearest its speaker
        weights = torch.nn.functional.normalize(head.objective.weight, dim=0)
        scores = torch.nn.functional.normalize(logits, dim=1) @ weights
        assert torch.equal(scores.argmax(-1), labels)
    else:
        assert torch.equal(logits.argmax(-1), labels)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_ctc_loss_of_a_padded_batch_is_that_of_its_items(reduction):
    head = tiny_head(SpidrForCTC, feat_extract_norm="group", ctc_loss_reduction=reduction)
    long, short = audio(1, 0)[0], audio(1, 1)[0, :5000]
    batch = torch.stack([long, torch.cat([short, torch.zeros(SAMPLES - 5000)])])
    attention_mask = torch.ones(2, SAMPLES, dtype=torch.long)
    attention_mask[1, 5000:] = 0
    labels = labels_for(SpidrForCTC)
    with torch.no_grad():
        together = head(batch, attention_mask=attention_mask, labels=labels).loss
        alone = [
            head(item[None], labels=row[row >= 0][None]).loss for item, row in zip((long, short), labels, strict=True)
        ]
    expected = sum(alone) / 2 if reduction == "mean" else sum(alone)  # "mean": per target token, then per item
    torch.testing.assert_close(together, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("representation", ["hidden_states", "layer_results"])
def test_the_weighted_layer_sum_weighs_the_chosen_layers(representation):
    plain = tiny_head(SpidrForSequenceClassification)
    weighted = tiny_head(
        SpidrForSequenceClassification, use_weighted_layer_sum=True, weighted_layer_representation=representation
    )
    weighted.load_state_dict(plain.state_dict(), strict=False)
    layers = TINY_CONFIG["num_hidden_layers"] + (representation == "hidden_states")
    assert weighted.layer_weights.shape == (layers,) and torch.allclose(weighted.layer_weights.sum(), torch.tensor(1.0))
    x = audio()
    with torch.no_grad():
        student = plain.spidr(x, output_hidden_states=True, output_layer_results=True)
        source = getattr(student, representation)
        for layer in (0, layers - 1):  # a softmax that picks one layer gives that layer's classification
            weighted.layer_weights.copy_(torch.full((layers,), -1e4))
            weighted.layer_weights[layer] = 0.0
            pooled = plain.projector(source[layer]).mean(1)
            torch.testing.assert_close(weighted(x).logits, plain.classifier(pooled), rtol=0, atol=1e-5)
        weighted.layer_weights.zero_()  # equal weights: the mean of the layers
        pooled = plain.projector(torch.stack(source).mean(0)).mean(1)
        torch.testing.assert_close(weighted(x).logits, plain.classifier(pooled), rtol=0, atol=1e-5)
    if representation == "hidden_states":  # its last entry is the last hidden state: the head without a sum
        torch.testing.assert_close(source[-1], student.last_hidden_state)


@pytest.mark.parametrize("head_class", HEADS, ids=lambda c: c.__name__)
def test_heads_keep_the_conventions_of_transformers_models(head_class, tmp_path):
    x, labels = audio(), labels_for(head_class)
    head = tiny_head(head_class)
    with torch.no_grad():
        output = head(x, labels=labels)
        again = head(x, labels=labels)
    assert torch.equal(main_output(output), main_output(again))  # evaluation is deterministic
    # return_dict=False in the config: tuples, loss first
    head.config.return_dict = False
    with torch.no_grad():
        as_tuple = head(x, labels=labels)
    head.config.return_dict = True
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], output.loss)
    # The config's output flags, and gradients that reach the hidden states and attentions
    eager = tiny_head(head_class, output_hidden_states=True, output_attentions=True, attn_implementation="eager")
    flagged = eager(x, labels=labels)
    assert len(flagged.hidden_states) == TINY_CONFIG["num_hidden_layers"] + 1
    assert len(flagged.attentions) == TINY_CONFIG["num_hidden_layers"]
    flagged.hidden_states[0].retain_grad()
    flagged.attentions[0].retain_grad()
    flagged.loss.backward()
    assert flagged.hidden_states[0].grad is not None and flagged.attentions[0].grad is not None
    # Saved and reloaded (also through its Auto class): the same outputs; the folder maps every head
    head.save_pretrained(tmp_path)
    for loader in (head_class, AUTO_CLASSES[head_class]):
        reloaded = loader.from_pretrained(tmp_path).eval()
        assert type(reloaded) is head_class
        with torch.no_grad():
            assert torch.equal(main_output(reloaded(x)), main_output(head(x)))
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert {"AutoModelForCTC", "AutoModelForAudioClassification", "AutoModelForAudioXVector"} <= auto_map.keys()


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_heads_train_every_parameter_under_gradient_checkpointing(use_reentrant):
    x, labels = audio(), labels_for(SpidrForCTC)
    expected_head = tiny_head(SpidrForCTC).train()
    expected_head(x, labels=labels).loss.backward()
    head = tiny_head(SpidrForCTC).train()
    head.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    head(x, labels=labels).loss.backward()
    for (name, parameter), expected in zip(head.named_parameters(), expected_head.parameters(), strict=True):
        assert parameter.grad is not None, name
        torch.testing.assert_close(parameter.grad, expected.grad, rtol=0, atol=1e-5, msg=name)


def test_freezing_the_feature_encoder_or_the_base_model():
    x, labels = audio(), labels_for(SpidrForSequenceClassification)
    head = tiny_head(SpidrForSequenceClassification, use_weighted_layer_sum=True).train()
    head.freeze_feature_encoder()
    head(x, labels=labels).loss.backward()
    assert all(p.grad is None for p in head.spidr.feature_extractor.parameters())
    assert head.spidr.encoder.layers[0].attention.qkv_proj.weight.grad is not None
    head.zero_grad(set_to_none=True)
    head.freeze_base_model()
    head(x, labels=labels).loss.backward()
    assert all(p.grad is None for p in head.spidr.parameters())
    assert head.classifier.weight.grad is not None and head.layer_weights.grad is not None


def test_heads_run_after_casting_to_bfloat16():
    head = tiny_head(SpidrForCTC).to(torch.bfloat16)
    output = head(audio(), labels=labels_for(SpidrForCTC))
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)  # CTC in fp32 whatever the model's


def test_bad_head_settings_are_one_line_errors():
    config = SpidrConfig(**TINY_CONFIG)
    with pytest.raises(ValueError, match="SpidrForCTC needs `vocab_size`"):
        SpidrForCTC(config)
    with pytest.raises(ValueError, match="SpidrForCTC needs `pad_token_id`"):
        SpidrForCTC(SpidrConfig(**TINY_CONFIG, vocab_size=7))
    cases = {
        "ctc_loss_reduction": ("none", "`ctc_loss_reduction` must be one of"),
        "weighted_layer_representation": ("attentions", "`weighted_layer_representation` must be one of"),
        "pad_token_id": (7, r"`pad_token_id` must be in \[0, 7\)"),
        "tdnn_kernel": ((3,), "`tdnn_dim`, `tdnn_kernel` and `tdnn_dilation` must be"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            head_config(**{name: value})
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="Label values must be < vocab_size"):
        tiny_head(SpidrForCTC)(audio(), labels=torch.tensor([[7, 1], [1, 1]]))
    with pytest.raises(ValueError, match="too short for the x-vector TDNN layers"):
        tiny_head(SpidrForXVector, tdnn_kernel=(9, 9, 9), tdnn_dilation=(2, 2, 2))(audio())


@pytest.mark.slow
def test_heads_load_through_remote_code_without_spidr_hf(tmp_path):
    torch.manual_seed(0)
    SpidrForPreTraining(head_config()).save_pretrained(tmp_path / "pretrained")
    x = audio()
    expected = {}
    for head_class in HEADS:
        head = head_class.from_pretrained(tmp_path / "pretrained", **HEAD_SETTINGS).eval()
        head.save_pretrained(tmp_path / head_class.__name__)
        with torch.no_grad():
            expected[head_class.__name__] = main_output(head(x))
    torch.save({"audio": x, "expected": expected}, tmp_path / "expected.pt")
    auto_names = {head.__name__: auto.__name__ for head, auto in AUTO_CLASSES.items()}
    script = textwrap.dedent(
        f"""
        import sys, torch, transformers
        data = torch.load({str(tmp_path / "expected.pt")!r})
        for name, expected in data["expected"].items():
            auto = {auto_names!r}[name]
            model = getattr(transformers, auto).from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True)
            with torch.no_grad():
                output = model.eval()(data["audio"])
            got = output.embeddings if name == "SpidrForXVector" else output.logits
            assert type(model).__name__ == name and torch.equal(got, expected), name
        # A pretraining folder fine-tunes through remote code too
        ctc = transformers.AutoModelForCTC.from_pretrained(
            {str(tmp_path / "pretrained")!r}, trust_remote_code=True, vocab_size=5, pad_token_id=0
        )
        assert ctc.lm_head.out_features == 5
        assert "spidr_hf" not in sys.modules
        print("ok")
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("ok")


def test_a_head_model_is_built_on_the_one_student_network():
    head = tiny_head(SpidrForCTC)
    assert type(head.spidr) is SpidrModel and head.base_model is head.spidr
