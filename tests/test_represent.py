"""`represent`: one call for per-item features and units, what the pipelines, extract, evaluate and kmeans use."""

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from transformers import pipeline

from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining

OBJECTIVES = [{}, {"objective": "dinosr"}]


def tiny(**overrides) -> SpidrForPreTraining:
    torch.manual_seed(0)
    return SpidrForPreTraining(SpidrConfig(**{**TINY_CONFIG, **overrides})).eval()


def items() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal(n).astype(np.float32) for n in (12000, 7000, 9100)]


@pytest.mark.parametrize("overrides", OBJECTIVES, ids=["spidr", "dinosr"])
def test_padded_items_get_the_features_and_units_they_get_alone(overrides):
    model = tiny(**overrides)
    extractor = SpidrFeatureExtractor()
    batch = extractor(items(), sampling_rate=16000, return_tensors="pt")
    together = model.represent(**batch, layers=[2, 4], units="codebook", unit_layers=[3, 4])
    for index, audio in enumerate(items()):
        alone = extractor(audio, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            output = model.spidr(**alone, output_layer_results=True)
        frames = output.layer_results[0].shape[1]
        assert together.lengths[index] == frames
        for layer in (2, 4):
            assert together.features[layer][index].shape == (frames, model.config.hidden_size)
            torch.testing.assert_close(together.features[layer][index], output.layer_results[layer - 1][0])
        for layer in (3, 4):
            assert torch.equal(together.units[layer][index], model.get_units(**alone, layer=layer)[0])


def layers_run(model: SpidrForPreTraining, call) -> int:
    """How many of the student's encoder layers `call()` runs."""
    ran = []
    hooks = [layer.register_forward_hook(lambda *_: ran.append(1)) for layer in model.spidr.encoder.layers]
    try:
        call()
    finally:
        for hook in hooks:
            hook.remove()
    return len(ran)


def test_it_stops_after_the_last_layer_needed():
    model = tiny()
    batch = SpidrFeatureExtractor()(items(), sampling_rate=16000, return_tensors="pt")
    assert layers_run(model, lambda: model.represent(**batch, layers=[2])) == 2
    assert layers_run(model, lambda: model.represent(**batch, layers=[1], units="codebook", unit_layers=[3])) == 3
    assert layers_run(model, lambda: model.represent(**batch, layers=[0], representation="hidden_states")) == 1
    dinosr = tiny(objective="dinosr")  # its heads read the final output
    assert layers_run(dinosr, lambda: dinosr.represent(**batch, layers=[1], units="codebook", unit_layers=[3])) == 4


def test_kmeans_units_and_hidden_states():
    model = tiny()
    torch.manual_seed(1)
    model.spidr.set_kmeans_centroids(2, torch.randn(5, model.config.hidden_size))
    batch = SpidrFeatureExtractor()(items(), sampling_rate=16000, return_tensors="pt")
    output = model.spidr.represent(**batch, layers=[0, 3], representation="hidden_states", units="kmeans")
    padded = model.spidr.get_kmeans_units(**batch)
    with torch.no_grad():
        states = model.spidr(**batch, output_hidden_states=True).hidden_states
    for index, length in enumerate(output.lengths):
        assert torch.equal(output.units[2][index], padded[index, :length])
        assert (padded[index, length:] == -1).all()
        for layer in (0, 3):
            assert torch.equal(output.features[layer][index], states[layer][index, :length])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"layers": [5]}, "Layer 5 is not a layer of this model: it has layers 1 to 4"),
        ({"layers": [0]}, "Layer 0 is not a layer of this model: it has layers 1 to 4"),
        ({"layers": [5], "representation": "hidden_states"}, r"it has layers 0 to 4 \(0: the encoder input\)"),
        ({"layers": [1], "representation": "logits"}, "`representation` must be one of"),
        ({"units": "codebook", "unit_layers": [1]}, "Layer 1 has no codebook head"),
        ({"units": "kmeans"}, "no k-means centroids"),
        ({"units": "phones"}, "`units` must be one of"),
    ],
)
def test_bad_requests_name_what_is_wrong(arguments, message):
    model = tiny()
    batch = SpidrFeatureExtractor()(items()[:1], sampling_rate=16000, return_tensors="pt")
    with pytest.raises(ValueError, match=message):
        model.represent(**batch, **arguments)


def test_codebook_units_need_the_heads():
    model = tiny()
    batch = SpidrFeatureExtractor()(items()[:1], sampling_rate=16000, return_tensors="pt")
    with pytest.raises(ValueError, match="Codebook units need the model with its codebook heads"):
        model.spidr.represent(**batch, units="codebook")


@pytest.mark.parametrize(
    ("config", "feature_layer", "unit_layer"),
    [
        ({}, 6, 6),  # SpidR base: the paper's layer 6
        ({"num_hidden_layers": 4, "num_codebooks": 2}, 4, 4),
        ({"num_hidden_layers": 8, "num_codebooks": 2}, 6, 7),  # heads on layers 7 and 8 only
        ({"num_hidden_layers": 12, "num_codebooks": 3}, 6, 10),
    ],
)
def test_default_layers_follow_the_depth(config, feature_layer, unit_layer):
    config = SpidrConfig(**config)
    assert config.default_feature_layer == feature_layer
    assert config.default_unit_layer == unit_layer
    assert config.default_unit_layer in config.codebook_layers


def test_pipelines_default_to_the_models_default_layers(tmp_path):
    model = tiny()  # 4 layers: the paper's layer 6 does not exist
    audio = items()[0]
    features = pipeline("spidr-features", model=model.spidr, feature_extractor=SpidrFeatureExtractor(), device="cpu")
    units = pipeline("spidr-units", model=model, feature_extractor=SpidrFeatureExtractor(), device="cpu")
    assert np.array_equal(
        features(audio, sampling_rate=16000)["features"], features(audio, sampling_rate=16000, layer=4)["features"]
    )
    assert np.array_equal(
        units(audio, sampling_rate=16000)["units"], units(audio, sampling_rate=16000, layer=4)["units"]
    )
