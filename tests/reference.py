"""Helpers around the reference implementation (`spidr==0.2.0`), used only as a test oracle."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import spidr
import torch
from spidr.config import DinoSRConfig, SpidRConfig
from spidr.models import DinoSR, SpidR

# A small reference configuration (reference field names); dropout 0 so that training-mode forwards are comparable.
SMALL_REFERENCE = {
    "extractor_conv_layer_config": [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
    "encoder_embed_dim": 64,
    "encoder_num_layers": 4,
    "encoder_num_heads": 4,
    "encoder_ff_interm_features": 128,
    "encoder_pos_conv_groups": 4,
    "num_codebooks": 2,
    "codebook_size": 16,
    "encoder_dropout": 0.0,
    "encoder_attention_dropout": 0.0,
}


def _load_reference_masks():
    """`spidr.data.masks` without `spidr.data`, whose package import needs a torchcodec API newer releases dropped."""
    path = Path(spidr.__file__).parent / "data" / "masks.py"
    spec = importlib.util.spec_from_file_location("reference_masks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compute_mask_indices = _load_reference_masks().compute_mask_indices


def build_reference(objective: str, **overrides) -> tuple[SpidR | DinoSR, DinoSRConfig]:
    config_class, model_class = (SpidRConfig, SpidR) if objective == "spidr" else (DinoSRConfig, DinoSR)
    config = config_class(**{**SMALL_REFERENCE, **overrides})
    return model_class(config).eval(), config


def write_reference_checkpoint(model: SpidR | DinoSR, config: DinoSRConfig, objective: str, folder: Path) -> Path:
    """Write the model as the reference's training does: `{"model": state_dict}` and a run `config.json` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{objective}.pt"
    torch.save({"model": model.state_dict()}, path)
    run_config = {"run": {"model_type": objective}, "model": dataclasses.asdict(config)}
    (folder / "config.json").write_text(json.dumps(run_config))
    return path


def mask_indices(mask: torch.Tensor) -> torch.Tensor:
    """Boolean `(batch, frames)` mask with equal counts per row to the reference's `(batch, num_masked)` positions."""
    return torch.stack([row.nonzero().squeeze(1) for row in mask])
