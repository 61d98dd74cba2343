"""
What the speed rests on, checked for correctness: the channels-last convolutions, early stopping, compilation without
graph breaks or recompilations, fused teacher EMA and codebook updates; and a smoke run of the benchmark. No timing
assertions.
"""

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG, load_script

from spidr_hf import SpidrConfig, SpidrForPreTraining, SpidrModel, compute_span_mask
from spidr_hf.model.modeling_spidr import channels_last_conv1d

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench.py"
NO_DROPOUT = {"hidden_dropout": 0.0, "attention_dropout": 0.0}


def tiny_pretraining_model(**overrides) -> SpidrForPreTraining:
    torch.manual_seed(0)
    return SpidrForPreTraining(SpidrConfig(**{**TINY_CONFIG, **overrides}))


def training_batch(model: SpidrForPreTraining, samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    frames = int(model._get_feat_extract_output_lengths(samples))
    mask = compute_span_mask([frames] * 2, frames, 0.8, 10, 2, generator=generator)
    return torch.randn(2, samples, generator=generator), mask


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "kernel", "stride", "padding", "groups", "bias"),
    [(1, 16, 10, 5, 0, 1, False), (8, 8, 3, 2, 0, 1, True), (8, 8, 19, 1, 9, 4, True), (8, 8, 4, 1, 2, 2, False)],
    ids=["waveform", "strided", "positional", "even-kernel"],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_channels_last_conv1d_equals_conv1d_with_its_gradients(
    in_channels, out_channels, kernel, stride, padding, groups, bias, batch
):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=bias)
    inputs = torch.randn(batch, 41, in_channels, requires_grad=True)  # (batch, frames, channels)
    expected = conv(inputs.transpose(1, 2)).transpose(1, 2)
    ours = channels_last_conv1d(inputs, conv)
    torch.testing.assert_close(ours, expected)
    cotangent = torch.randn_like(expected)
    wrt = [inputs, conv.weight, *([conv.bias] if bias else [])]
    torch.testing.assert_close(torch.autograd.grad(ours, wrt, cotangent), torch.autograd.grad(expected, wrt, cotangent))


def test_num_layers_stops_the_encoder_early():
    torch.manual_seed(0)
    model = SpidrModel(SpidrConfig(**TINY_CONFIG)).eval()
    audio = torch.randn(2, 6000)
    ran = []
    model.encoder.layers[2].register_forward_hook(lambda *args: ran.append(True))
    with torch.no_grad():
        full = model(audio, output_layer_results=True, output_hidden_states=True)
        ran.clear()
        early = model(audio, num_layers=2, output_layer_results=True, output_hidden_states=True)
    assert not ran
    assert len(early.layer_results) == 2 and len(early.hidden_states) == 3
    for ours, expected in zip(early.layer_results, full.layer_results[:2], strict=True):
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    torch.testing.assert_close(early.last_hidden_state, full.hidden_states[2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_layers"):
        model(audio, num_layers=TINY_CONFIG["num_hidden_layers"] + 1)


@pytest.mark.slow
def test_training_forward_compiles_to_one_graph_without_breaks():
    model = tiny_pretraining_model().train()
    audio, mask = training_batch(model, 8000)
    explanation = torch._dynamo.explain(model)(audio, mask_time_indices=mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def training_losses(model: SpidrForPreTraining, batches: list, forward: Callable) -> list[float]:
    """Losses of full training steps: forward, backward, clip, AdamW, teacher EMA (codebooks update in the forward)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.01)
    losses = []
    for step, (audio, mask) in enumerate(batches):
        loss = forward(audio, mask_time_indices=mask).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(step)
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_compiled_training_steps_give_the_eager_losses_without_recompiling():
    # The aot_eager backend traces what inductor compiles (dynamo graph, AOTAutograd joint forward/backward graph,
    # functionalized buffer updates); inductor's C++ code generation alone would take minutes on a small CPU.
    eager = tiny_pretraining_model(**NO_DROPOUT).train()
    compiled = copy.deepcopy(eager)
    batches = [training_batch(eager, samples, seed) for seed, samples in enumerate((8000, 9600, 8800))]
    expected = training_losses(eager, batches, eager)
    forward = torch.compile(compiled, dynamic=True, backend="aot_eager")
    with torch._dynamo.config.patch(error_on_recompile=True):  # other lengths reuse the first dynamic-shape graph
        losses = training_losses(compiled, batches, forward)
    assert losses == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(compiled.codebooks.codebook, eager.codebooks.codebook)
    for compiled_param, eager_param in zip(compiled.teacher.parameters(), eager.teacher.parameters(), strict=True):
        torch.testing.assert_close(compiled_param, eager_param)


def test_teacher_ema_moves_every_parameter_towards_the_student_and_stays_fp32():
    """The fused update gives each parameter's own lerp; the positional convolution is copied. A bf16 student too."""
    model = tiny_pretraining_model(ema_start_decay=0.9)  # a large step, far above the comparison's tolerance
    with torch.no_grad():  # a student that differs from the teacher in every parameter (norms start equal)
        for param in model.spidr.encoder.parameters():
            param.add_(torch.randn_like(param))
    model.spidr.to(torch.bfloat16)  # as loaded with dtype=torch.bfloat16: the teacher is kept in fp32
    before = {name: param.clone() for name, param in model.teacher.named_parameters()}
    student = {name: param.float() for name, param in model.spidr.encoder.named_parameters()}
    decay = model.update_teacher(0)
    assert decay == pytest.approx(0.9)
    teacher = dict(model.teacher.named_parameters())
    assert teacher.keys() == before.keys() == student.keys()
    for name, param in teacher.items():
        assert param.dtype == torch.float32, name
        if name.startswith("pos_conv_embed."):
            torch.testing.assert_close(param, student[name], rtol=0, atol=0, msg=name)
        else:
            torch.testing.assert_close(param, torch.lerp(before[name], student[name], 1 - decay), msg=name)


@pytest.mark.parametrize("num_codebooks", [1, 3])
def test_frames_go_to_the_nearest_codeword_and_an_undecayed_update_moves_it_to_their_mean(num_codebooks):
    """
    Assignment is the brute-force nearest codeword of each codebook; with `codebook_decay=0` an update is a k-means
    step: a codeword that got frames becomes their mean (its count their number), the others stay as they are.
    """
    model = tiny_pretraining_model(num_codebooks=num_codebooks, codebook_decay=0.0)
    codebooks = model.codebooks
    generator = torch.Generator().manual_seed(1)
    # Fewer frames than codewords, so that some codewords get none
    targets = torch.randn(num_codebooks, 12, TINY_CONFIG["hidden_size"], generator=generator)
    before, counts_before = codebooks.codewords().clone(), codebooks.counts.clone()
    labels = codebooks.assign(targets)
    distances = torch.cdist(targets, before)  # (num_codebooks, frames, codewords)
    assert labels.shape == (num_codebooks, 12)
    torch.testing.assert_close(distances.gather(-1, labels.unsqueeze(-1)).squeeze(-1), distances.min(-1).values)

    codebooks.update(targets, F.one_hot(labels, TINY_CONFIG["codebook_size"]).float())
    after = codebooks.codewords()
    for k in range(num_codebooks):
        for codeword in range(TINY_CONFIG["codebook_size"]):
            frames = targets[k, labels[k] == codeword]
            if len(frames):
                torch.testing.assert_close(after[k, codeword], frames.mean(0))
                assert codebooks.counts[k, codeword].item() == len(frames)
            else:
                assert torch.equal(after[k, codeword], before[k, codeword])
                assert codebooks.counts[k, codeword] == counts_before[k, codeword]


@pytest.mark.slow
def test_benchmark_quick_run_writes_its_report(tmp_path):
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeats", "1", "--warmup", "0", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # the CPU run; a GPU would add bf16 and compiled workloads
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert {"device", "threads", "torch", "transformers", "reference", "quick"} <= set(report["environment"])
    assert report["environment"]["quick"] is True
    names = [result["name"] for result in report["results"]]
    assert names == [
        "inference tiny 1x1s",
        "inference tiny 4x1s",
        "units tiny 1x1s",
        "inference tiny 1x1s bfloat16 cast",  # the models cast to bf16, as CPU bf16 inference runs
        "inference tiny 4x1s bfloat16 cast",
        "train_step tiny 2x1s",
    ]
    for result in report["results"]:
        systems = {"ours", "reference", "hubert"} if result["task"] == "inference" else {"ours", "reference"}
        assert set(result["systems"]) == systems
        for entry in result["systems"].values():
            assert entry["median_s"] > 0 and entry["audio_s_per_s"] > 0 and len(entry["times_s"]) == 1
            assert entry["memory_mib"] >= 0
        assert set(result["ratios"]) == {f"ours/{name}" for name in systems - {"ours"}}
        assert all(ratio["time"] > 0 and "memory" in ratio for ratio in result["ratios"].values())
        assert result["goals"] and all(isinstance(met, bool) for met in result["goals"].values())
    assert [result["cast"] for result in report["results"]] == [False, False, False, True, True, False]
    inference, _, units, *_ = report["results"]
    assert inference["checks"]["max_abs_diff_ours_vs_reference"] <= 1e-4
    assert units["checks"]["units_agreement"] >= 0.95


def test_benchmark_counts_bf16_flops_for_the_utilisation_figure():
    """The GPU-only MFU path (bf16 workloads, FLOPs counted per system), run here on CPU autocast."""
    bench = load_script(BENCH, "spidr_bench")
    device = torch.device("cpu")
    models = bench.build_models(bench.SIZES["tiny"], device, with_hubert=True)
    workloads = bench.inference_workloads(models, bench.QUICK_PLAN, device, torch.bfloat16, compiled=False)
    single, batched = next(workloads), next(workloads)
    assert (single.batch, batched.batch) == (1, 4)
    flops = {name: bench.count_flops(call) for name, call in single.flop_calls.items()}
    # ours and the reference compute the same function; HuBERT has another positional convolution
    assert flops["ours"] == flops["reference"] > 0 and flops["hubert"] > 0
    assert bench.count_flops(batched.flop_calls["ours"]) == 4 * flops["ours"]  # counted for the whole batch
    # At the peak rate of `ours` (TFLOP/s), `ours` uses all of it and the twice slower reference half of it
    peak = flops["ours"] / 0.5 / 1e12
    times = {"ours": [0.5], "reference": [1.0], "hubert": [0.5]}
    result = bench.summarize(single, times, {}, flops, peak=peak)
    assert result["dtype"] == "bfloat16"
    assert result["systems"]["ours"]["mfu"] == pytest.approx(1.0)
    assert result["systems"]["reference"]["mfu"] == pytest.approx(0.5)
    assert bench.summarize(single, times, {}, flops, peak=None)["systems"]["ours"]["mfu"] is None  # unknown GPU
