"""`spidr-hf convert`: checkpoint formats and clear errors that leave nothing behind."""

import json
import os
import re
import stat

import pytest
import spidr.models.utils as reference_utils
import torch
from reference import build_reference, write_reference_checkpoint
from transformers import AutoFeatureExtractor, AutoModelForPreTraining

from spidr_hf import SpidrFeatureExtractor, SpidrForPreTraining
from spidr_hf.hub.convert import ConversionError, convert
from spidr_hf_cli import main as cli_main


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item()


@pytest.fixture
def reference_checkpoint(tmp_path):
    torch.manual_seed(0)
    model, config = build_reference("spidr")
    return model, write_reference_checkpoint(model, config, "spidr", tmp_path / "original")


def test_bare_state_dict_with_module_prefix_and_model_section_config(tmp_path):
    torch.manual_seed(0)
    model, config = build_reference("dinosr")
    folder = tmp_path / "original"
    write_reference_checkpoint(model, config, "dinosr", folder)
    # DDP-style keys, no "model" wrapper, and a config.json holding only the model section
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, folder / "bare.pt")
    run_config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(run_config["model"]))
    convert(folder / "bare.pt", tmp_path / "out", model_type="dinosr")
    ours = AutoModelForPreTraining.from_pretrained(tmp_path / "out").eval()
    assert ours.config.objective == "dinosr" and ours.config.layerdrop == pytest.approx(0.05)
    assert type(AutoFeatureExtractor.from_pretrained(tmp_path / "out")) is SpidrFeatureExtractor
    x = torch.randn(1, 6000)
    with torch.no_grad():
        for expected, actual in zip(
            model.get_intermediate_outputs(x), ours.spidr(x, output_layer_results=True).layer_results, strict=True
        ):
            assert max_diff(expected, actual) <= 1e-4


def fairseq_checkpoint_from(reference) -> dict:
    """Write a reference DinoSR model in the original fairseq DinoSR layout (the inverse of the reference's mapping)."""
    state = reference.state_dict()
    model, ema = {}, {}
    model["mask_emb"] = state["mask_embedding"]
    model["layer_norm.weight"] = state["feature_projection.layer_norm.weight"]
    model["layer_norm.bias"] = state["feature_projection.layer_norm.bias"]
    model["post_extract_proj.weight"] = state["feature_projection.projection.weight"]
    model["post_extract_proj.bias"] = state["feature_projection.projection.bias"]
    for key, value in state.items():
        if match := re.match(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)", key):
            layer, part, kind = match.groups()
            model[f"feature_extractor.conv_layers.{layer}.{'0' if part == 'conv' else '2.1'}.{kind}"] = value
        elif match := re.match(r"codebooks\.(\d+)\.(codebook|counts)", key):
            model[f"_codebook{'_cnts' if match.group(2) == 'counts' else ''}{match.group(1)}"] = value
        elif match := re.match(r"heads\.(\d+)\.0\.(weight|bias)", key):
            model[f"heads.{match.group(1)}.{match.group(2)}"] = value
        elif match := re.match(r"(student|teacher)\.(.*)", key):
            target, prefix = (model, "encoder.") if match.group(1) == "student" else (ema, "")
            for name, value_part in fairseq_encoder_entries(match.group(2), value):
                target[prefix + name] = value_part
    model["_ema"] = ema
    return {"model": model, "cfg": {"model": {"_name": "dinosr"}}}


def fairseq_encoder_entries(name: str, value: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    renames = {
        "feed_forward.intermediate_dense": "fc1",
        "feed_forward.output_dense": "fc2",
        "attention.proj": "self_attn.out_proj",
        "layer_norm": "self_attn_layer_norm",
    }
    if match := re.match(r"pos_conv_embed\.convs\.(\d+)\.(weight|bias)", name):
        return [(f"pos_conv.{match.group(1)}.0.{match.group(2)}", value)]
    if match := re.match(r"layers\.(\d+)\.attention\.qkv\.(weight|bias)", name):
        return [
            (f"layers.{match.group(1)}.self_attn.{p}_proj.{match.group(2)}", part)
            for p, part in zip("qkv", value.chunk(3), strict=True)
        ]
    if match := re.match(r"layers\.(\d+)\.(.*)\.(weight|bias)", name):
        layer, module, kind = match.groups()
        return [(f"layers.{layer}.{renames.get(module, module)}.{kind}", value)]
    return [(name, value)]


@pytest.mark.slow
def test_original_fairseq_dinosr_checkpoint(tmp_path):
    """Base size, because the reference's fairseq mapping (our oracle for the layout) is written for it."""
    from spidr.config import DinoSRConfig
    from spidr.models import DinoSR

    torch.manual_seed(0)
    reference = DinoSR(DinoSRConfig(encoder_qkv_bias=True)).eval()
    checkpoint = fairseq_checkpoint_from(reference)
    # The oracle maps our fake fairseq checkpoint back to the reference weights
    mapped = reference_utils.state_dict_from_dinosr_fairseq_checkpoint(checkpoint)
    for key, value in reference.state_dict().items():
        assert torch.equal(mapped[key], value), key
    torch.save(checkpoint, tmp_path / "dinosr.ckpt")
    assert cli_main(["convert", str(tmp_path / "dinosr.ckpt"), str(tmp_path / "out")]) == 0
    ours = SpidrForPreTraining.from_pretrained(tmp_path / "out").eval()
    assert ours.config.qkv_bias and ours.config.objective == "dinosr"
    x = torch.randn(1, 8000)
    with torch.no_grad():
        assert (
            max_diff(
                reference.student(reference.feature_projection(reference.feature_extractor(x))),
                ours.spidr(x).last_hidden_state,
            )
            <= 1e-4
        )
        for expected, actual in zip(reference.get_codebooks(x), ours.get_codebook_probs(x), strict=True):
            assert (expected is None) == (actual is None)
            if expected is not None:
                assert max_diff(expected, actual[0]) <= 1e-4
    teacher = {k: v for k, v in ours.state_dict().items() if k.startswith("teacher.")}
    expected_teacher = reference.teacher.state_dict()
    assert (
        max_diff(
            teacher["teacher.layers.3.attention.qkv_proj.weight"], expected_teacher["layers.3.attention.qkv.weight"]
        )
        == 0
    )


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ConversionError, match="not a PyTorch checkpoint"):
        convert(tmp_path / "notes.pt", tmp_path / "out")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ConversionError, match="not a checkpoint dictionary"):
        convert(tmp_path / "tensor.pt", tmp_path / "out")
    with pytest.raises(ConversionError, match="is not a file"):
        convert(tmp_path / "missing.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("heads.1.0.weight"), r"missing.*heads\.1\.weight"),
        (lambda sd: sd.update(extra=torch.zeros(1)), r"unexpected.*'extra'"),
        (
            lambda sd: sd.update({"mask_embedding": torch.zeros(65)}),
            r"mask_embedding.*\(65,\).*\(64,\)",
        ),
        (lambda sd: sd.update({"student.layer_norm.weight": "text"}), "not tensors"),
    ],
)
def test_mismatched_checkpoints_name_the_problem_and_write_nothing(reference_checkpoint, tmp_path, edit, message):
    _, path = reference_checkpoint
    checkpoint = torch.load(path)
    edit(checkpoint["model"])
    torch.save(checkpoint, path)
    with pytest.raises(ConversionError, match=message):
        convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["original"]  # no staging folder left behind


def test_destination_must_be_new_or_empty(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        convert(path, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    convert(path, tmp_path / "empty")
    written = {p.name for p in (tmp_path / "empty").iterdir()}
    assert written >= {"config.json", "model.safetensors", "modeling_spidr.py", "pipeline_spidr.py"}
    config = json.loads((tmp_path / "empty" / "config.json").read_text())
    assert set(config["custom_pipelines"]) == {"spidr-features", "spidr-units"}


def test_model_type_must_agree_with_the_run_config(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    with pytest.raises(ConversionError, match="contradicts"):
        convert(path, tmp_path / "out", model_type="dinosr")


def test_unknown_config_fields_are_reported(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    config = json.loads((path.parent / "config.json").read_text())
    config["model"]["encoder_rotary"] = True
    (path.parent / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="encoder_rotary"):
        convert(path, tmp_path / "out")


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", str(tmp_path / "notes.pt"), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "spidr-hf convert: error:" in capsys.readouterr().err


def test_written_folders_get_the_usual_permissions(reference_checkpoint, tmp_path):
    """Under umask 022 a new or empty destination ends up 755 with 644 files, like a plain mkdir and open."""
    _, path = reference_checkpoint
    (tmp_path / "empty").mkdir(mode=0o755)
    previous = os.umask(0o022)
    try:
        for destination in (tmp_path / "new", tmp_path / "empty"):
            convert(path, destination)
            assert stat.S_IMODE(destination.stat().st_mode) == 0o755
            modes = {stat.S_IMODE(file.stat().st_mode) for file in destination.iterdir()}
            assert modes == {0o644}
    finally:
        os.umask(previous)
