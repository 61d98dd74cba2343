"""Parity with the reference implementation `spidr==0.2.0`, through `spidr-hf convert` and the Auto classes."""

import pytest
import torch
from reference import build_reference, compute_mask_indices, mask_indices, write_reference_checkpoint
from transformers import AutoModel, AutoModelForPreTraining

from spidr_hf import SpidrForPreTraining, SpidrModel, compute_span_mask
from spidr_hf_cli import main as cli_main

TOLERANCE = 1e-4

VARIANTS = {
    "spidr": ("spidr", {}),
    "dinosr": ("dinosr", {}),
    "spidr-pre-ln": ("spidr", {"encoder_layer_norm_first": True}),
    "spidr-group-norm": ("spidr", {"extractor_mode": "group_norm"}),
    "dinosr-qkv-bias-pre-ln": ("dinosr", {"encoder_qkv_bias": True, "encoder_layer_norm_first": True}),
    "spidr-small-even-pos-kernel-conv-bias": (
        "spidr",
        {
            "encoder_num_layers": 3,
            "num_codebooks": 1,
            "encoder_pos_conv_kernel": 64,
            "encoder_pos_conv_depth": 4,
            "extractor_conv_bias": True,
        },
    ),
    "dinosr-layerdrop": ("dinosr", {"encoder_layer_drop": 0.4}),
}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


@pytest.fixture(params=list(VARIANTS), scope="module")
def converted(request, tmp_path_factory):
    """A reference model, and ours converted from its checkpoint with the `spidr-hf convert` command."""
    objective, overrides = VARIANTS[request.param]
    torch.manual_seed(0)
    reference, reference_config = build_reference(objective, **overrides)
    folder = tmp_path_factory.mktemp(request.param)
    checkpoint = write_reference_checkpoint(reference, reference_config, objective, folder / "original")
    assert cli_main(["convert", str(checkpoint), str(folder / "converted")]) == 0
    ours = AutoModelForPreTraining.from_pretrained(folder / "converted").eval()
    assert isinstance(ours, SpidrForPreTraining)
    assert ours.config.objective == objective
    return reference, ours, folder / "converted"


@pytest.fixture(scope="module")
def waveforms():
    return torch.randn(2, 9000, generator=torch.Generator().manual_seed(1))


def test_layer_results_hidden_states_and_last_hidden_state(converted, waveforms):
    reference, ours, _ = converted
    output = ours.spidr(waveforms, output_hidden_states=True, output_layer_results=True)
    with torch.no_grad():
        reference_results = reference.get_intermediate_outputs(waveforms)
        features = reference.feature_projection(reference.feature_extractor(waveforms))
        reference_outputs = reference.student.get_intermediate_outputs(features, before_residual=False)
        reference_last = reference.student(features)
    assert len(output.layer_results) == len(reference_results) == ours.config.num_hidden_layers
    for ours_result, reference_result in zip(output.layer_results, reference_results, strict=True):
        assert max_diff(ours_result, reference_result) <= TOLERANCE
    assert len(output.hidden_states) == ours.config.num_hidden_layers + 1
    for ours_hidden, reference_hidden in zip(output.hidden_states[1:], reference_outputs, strict=True):
        assert max_diff(ours_hidden, reference_hidden) <= TOLERANCE
    assert max_diff(output.last_hidden_state, reference_last) <= TOLERANCE


def test_automodel_loads_the_student(converted, waveforms):
    reference, _, folder = converted
    student = AutoModel.from_pretrained(folder).eval()
    assert type(student) is SpidrModel
    with torch.no_grad():
        expected = reference.student(reference.feature_projection(reference.feature_extractor(waveforms)))
        assert max_diff(student(waveforms).last_hidden_state, expected) <= TOLERANCE


def test_codebook_probabilities(converted, waveforms):
    reference, ours, _ = converted
    with torch.no_grad():
        expected = reference.get_codebooks(waveforms)
    probabilities = ours.get_codebook_probs(waveforms)
    assert len(probabilities) == len(expected)
    for ours_probs, reference_probs in zip(probabilities, expected, strict=True):
        assert (ours_probs is None) == (reference_probs is None)
        if ours_probs is not None:
            assert max_diff(ours_probs, reference_probs) <= TOLERANCE


def test_training_forward_loss_perplexities_and_codebook_update(converted, waveforms):
    reference, ours, _ = converted
    frames = ours.spidr._get_feat_extract_output_lengths(waveforms.shape[1]).item()
    mask = compute_span_mask([frames] * 2, frames, 0.8, 10, 2, generator=torch.Generator().manual_seed(2))
    reference.train()
    ours.train()
    try:
        torch.manual_seed(3)  # same LayerDrop draws
        reference_losses, reference_logs = reference(waveforms, mask_indices=mask_indices(mask))
        torch.manual_seed(3)
        output = ours(waveforms, mask_time_indices=mask)
    finally:
        reference.eval()
        ours.eval()
    assert abs(output.loss.item() - reference_losses.mean().item()) <= TOLERANCE
    assert abs(output.target_perplexity.item() - reference_logs["target_ppl"].item()) <= TOLERANCE
    assert abs(output.prediction_perplexity.item() - reference_logs["pred_ppl"].item()) <= TOLERANCE
    for k, codebook in enumerate(reference.codebooks):
        assert max_diff(ours.codebooks.codebook[k], codebook.codebook) <= TOLERANCE
        assert max_diff(ours.codebooks.counts[k], codebook.counts) <= TOLERANCE


def test_gradients_match(converted, waveforms):
    reference, ours, _ = converted
    frames = ours.spidr._get_feat_extract_output_lengths(waveforms.shape[1]).item()
    mask = compute_span_mask([frames] * 2, frames, 0.8, 10, 2, generator=torch.Generator().manual_seed(4))
    reference_losses, _ = reference(waveforms, mask_indices=mask_indices(mask))
    reference_losses.mean().backward()
    ours(waveforms, mask_time_indices=mask).loss.backward()
    reference_grads = {
        "projection": reference.feature_projection.projection.weight.grad,
        "first_conv": reference.feature_extractor.conv_layers[0].conv.weight.grad,
        "last_ffn": reference.student.layers[-1].feed_forward.output_dense.weight.grad,
        "head": reference.heads[-1][0].weight.grad,
        "mask": reference.mask_embedding.grad,
    }
    ours_grads = {
        "projection": ours.spidr.feature_projection.projection.weight.grad,
        "first_conv": ours.spidr.feature_extractor.conv_layers[0].conv.weight.grad,
        "last_ffn": ours.spidr.encoder.layers[-1].feed_forward.output_dense.weight.grad,
        "head": ours.heads[-1].weight.grad,
        "mask": ours.mask_embedding.grad,
    }
    for name, expected in reference_grads.items():
        assert max_diff(ours_grads[name], expected) <= TOLERANCE, name
    frozen_reference = {
        n for n, p in reference.named_parameters() if not p.requires_grad and not n.startswith("teacher")
    }
    frozen_ours = {n for n, p in ours.named_parameters() if not p.requires_grad and not n.startswith("teacher")}
    assert len(frozen_ours) == len(frozen_reference)
    reference.zero_grad()
    ours.zero_grad()


@pytest.mark.parametrize("steps", [[1, 2, 3], [10, 5_000, 30_000, 150_000, 400_000]])
def test_teacher_update(converted, steps):
    reference, ours, _ = converted
    # Make the student differ from the teacher in every parameter, identically in both models
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for (_, reference_param), (_, ours_param) in zip(
            reference.student.named_parameters(), ours.spidr.encoder.named_parameters(), strict=True
        ):
            noise = 0.01 * torch.randn(reference_param.shape, generator=generator)
            reference_param.add_(noise)
            ours_param.add_(noise)
    for step in steps:
        assert ours.update_teacher(step) == pytest.approx(reference.update_ema(step), abs=1e-12)
        for (_, reference_param), (_, ours_param) in zip(
            reference.teacher.named_parameters(), ours.teacher.named_parameters(), strict=True
        ):
            assert max_diff(ours_param, reference_param) <= 1e-6
    frozen = steps[-1] >= ours.config.freeze_step
    assert all(p.requires_grad != frozen for p in ours.spidr.feature_extractor.parameters())
    assert all(p.requires_grad != frozen for p in ours.spidr.feature_projection.parameters())


@pytest.mark.parametrize("lengths", [[49, 49, 49], [60, 33, 12], [300, 5, 2], [25]])
def test_span_masks_equal_reference_draws(lengths):
    max_frames = max(lengths)
    padding = torch.arange(max_frames) >= torch.tensor(lengths)[:, None]
    for seed in range(5):
        expected = compute_mask_indices(
            (len(lengths), max_frames),
            padding,
            0.8,
            10,
            "static",
            0.0,
            min_masks=2,
            min_space=1,
            no_overlap=False,
            generator=torch.Generator().manual_seed(seed),
        )
        ours = compute_span_mask(lengths, max_frames, 0.8, 10, 2, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(mask_indices(ours), expected)
