"""Shared test setup: never touch the network, and small model configurations."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest

TINY_CONFIG = {
    "num_hidden_layers": 4,
    "num_codebooks": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": (32,) * 7,
    "num_conv_pos_embedding_groups": 4,
    "codebook_size": 16,
}


@pytest.fixture
def tiny_config_kwargs() -> dict:
    return dict(TINY_CONFIG)
