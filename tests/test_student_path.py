"""One student path: pretraining, units, features, pipelines and evaluation all run `SpidrModel.forward`."""

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from transformers import pipeline

from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining, compute_span_mask
from spidr_hf.model.representations import ModelRepresentations

OBJECTIVES = [{}, {"objective": "dinosr", "do_stable_layer_norm": True}]


def tiny(**overrides) -> SpidrForPreTraining:
    torch.manual_seed(0)
    return SpidrForPreTraining(SpidrConfig(**{**TINY_CONFIG, **overrides})).eval()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    audio = torch.randn(2, 12000, generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones(2, 12000, dtype=torch.long)
    attention_mask[1, 9000:] = 0
    return audio, attention_mask


def test_masked_student_forward_is_the_pretraining_student():
    """`SpidrModel.forward(mask_time_indices=...)` gives the pretraining output's layer results and logits."""
    model = tiny()
    audio, attention_mask = padded_batch()
    frames = int(model._get_feat_extract_output_lengths(audio.shape[1]))
    masks = compute_span_mask([frames, frames], frames, 0.5, 2, 1, torch.Generator().manual_seed(2))
    with torch.no_grad():
        pretraining = model(audio, attention_mask, mask_time_indices=masks, output_layer_results=True)
        student = model.spidr(
            audio,
            attention_mask,
            mask_time_indices=pretraining.mask_time_indices,
            mask_embedding=model.mask_embedding,
            output_layer_results=True,
        )
        unmasked = model.spidr(audio, attention_mask, output_layer_results=True)
    for ours, expected in zip(pretraining.layer_results, student.layer_results, strict=True):
        assert torch.equal(ours, expected)
    first = model.config.codebook_layers[0]
    for head, logits, layer_result in zip(
        model.heads, pretraining.logits, student.layer_results[first - 1 :], strict=True
    ):
        assert torch.equal(logits, head(layer_result))
    # The masks did change the student's output, only through the masked frames
    assert not torch.allclose(student.layer_results[-1], unmasked.layer_results[-1])
    with pytest.raises(ValueError, match="mask_embedding"):
        model.spidr(audio, mask_time_indices=masks)


@pytest.mark.parametrize("overrides", OBJECTIVES, ids=["spidr", "dinosr"])
def test_one_inference_call_gives_features_and_units(overrides):
    model = tiny(**overrides)
    audio, attention_mask = padded_batch()
    with torch.no_grad():
        output = model(audio, attention_mask, return_loss=False, output_layer_results=True, output_hidden_states=True)
        student = model.spidr(audio, attention_mask, output_layer_results=True, output_hidden_states=True)
    assert output.loss is None and output.mask_time_indices is None
    for ours, expected in zip(
        output.layer_results + output.hidden_states, student.layer_results + student.hidden_states, strict=True
    ):
        assert torch.equal(ours, expected)
    assert len(output.logits) == model.config.num_codebooks
    for layer, logits in zip(model.config.codebook_layers, output.logits, strict=True):
        units = logits.argmax(-1).masked_fill(~frame_mask(model, attention_mask, logits.shape[1]), -1)
        assert torch.equal(units, model.get_units(audio, attention_mask, layer=layer))


def frame_mask(model: SpidrForPreTraining, attention_mask: torch.Tensor, frames: int) -> torch.Tensor:
    lengths = model._get_feat_extract_output_lengths(attention_mask.sum(-1))
    return torch.arange(frames) < lengths[:, None]


def break_layers_after(model: SpidrForPreTraining, layer: int) -> None:
    """NaN weights in every encoder layer after `layer`: any output that ran them is NaN."""
    with torch.no_grad():
        for broken in model.spidr.encoder.layers[layer:]:
            broken.feed_forward.output_dense.weight.fill_(float("nan"))


def test_units_and_features_stop_after_the_layer_they_need():
    model = tiny()
    audio, attention_mask = padded_batch()
    layer = model.config.codebook_layers[0]
    with torch.no_grad():
        expected = model.spidr(audio, attention_mask, output_layer_results=True).layer_results[layer - 1]
    expected_units = model.get_units(audio, attention_mask, layer=layer)
    break_layers_after(model, layer)
    assert torch.equal(model.get_units(audio, attention_mask, layer=layer), expected_units)
    with torch.no_grad():
        output = model(audio, attention_mask, return_loss=False, num_layers=layer, output_layer_results=True)
    assert torch.equal(output.layer_results[layer - 1], expected)
    assert len(output.logits) == 1  # only the head of the layer that ran
    with pytest.raises(ValueError, match="num_layers"):
        model(audio, attention_mask, num_layers=layer)  # the loss needs every layer


def test_dinosr_heads_need_every_layer():
    model = tiny(objective="dinosr")
    with pytest.raises(ValueError, match="DinoSR"):
        model(torch.randn(1, 8000), return_loss=False, num_layers=2)


@pytest.mark.parametrize("representation, layer", [("layer_results", 1), ("hidden_states", 0), ("hidden_states", 1)])
def test_features_pipeline_stops_after_its_layer(representation, layer):
    model = tiny()
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    features = pipeline("spidr-features", model=model.spidr, feature_extractor=SpidrFeatureExtractor(), device="cpu")
    expected = features(audio, sampling_rate=16000, layer=layer, representation=representation)["features"]
    break_layers_after(model, 1)
    with torch.no_grad():
        broken_last = model.spidr(torch.from_numpy(audio)[None], output_layer_results=True).layer_results[-1]
    assert torch.isnan(broken_last).all()  # a full run would give NaN
    actual = features(audio, sampling_rate=16000, layer=layer, representation=representation)["features"]
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("overrides", OBJECTIVES, ids=["spidr", "dinosr"])
def test_evaluation_representations_come_from_one_forward_that_stops_early(overrides):
    model = tiny(**overrides)
    audios = [np.random.default_rng(seed).standard_normal(n).astype(np.float32) for seed, n in [(0, 12000), (1, 9000)]]
    layer = model.config.codebook_layers[0]
    representations = ModelRepresentations(model, SpidrFeatureExtractor(), [layer], [layer], "cpu")
    output = representations(audios)
    inputs = SpidrFeatureExtractor()(audios, sampling_rate=16000, return_tensors="pt")
    lengths = model._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1)).tolist()
    with torch.no_grad():
        expected_features = model.spidr(**inputs, output_layer_results=True).layer_results[layer - 1]
    expected_units = model.get_units(**inputs, layer=layer)
    for b, length in enumerate(lengths):
        assert torch.equal(output.features[layer][b], expected_features[b, :length])
        assert torch.equal(output.units[layer][b], expected_units[b, :length])
    if overrides:
        return  # DinoSR units read the last layer: nothing can stop early
    break_layers_after(model, layer)
    stopped = representations(audios)
    for ours, expected in zip(stopped.units[layer], output.units[layer], strict=True):
        assert torch.equal(ours, expected)
