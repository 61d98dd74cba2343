"""
Unit language models: the tokens of units for any transformers causal LM (`UnitVocabulary`; `training/train_ulm.py`
trains one), the identity of the units an LM was trained on (recorded in its config, so that it scores only units of
the same encoder), and the log-probability of unit sequences (`spidr-hf slm-score`).

Vocabulary: unit u is token u (0 <= u < num_units), then BOS, EOS and PAD. A file is BOS, its units, EOS; training
sequences are files laid end to end and cut into blocks of `block_size` tokens (the last block padded).
"""

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelLoadError, SpidrError
from ..model.pipeline_spidr import run_starts
from ..units.record import LM_CONFIG_KEY, UnitIdentity


@dataclass(frozen=True)
class UnitVocabulary:
    """The tokens of a unit LM whose units are those of `identity`."""

    identity: UnitIdentity

    @property
    def bos(self) -> int:
        return self.identity.num_units

    @property
    def eos(self) -> int:
        return self.identity.num_units + 1

    @property
    def pad(self) -> int:
        return self.identity.num_units + 2

    @property
    def vocab_size(self) -> int:
        return self.identity.num_units + 3

    def tokens(self, units: np.ndarray, name: str = "a file") -> list[int]:
        """BOS, the units (runs merged when the identity deduplicates), EOS; units that are no unit of the identity
        are a one-line error naming the file (`name`)."""
        units = np.asarray(units)
        if units.size and (units.min() < 0 or units.max() >= self.identity.num_units):
            raise SpidrError(
                f"The units of {name} go from {units.min()} to {units.max()}, beyond the {self.identity.num_units} "
                "units they are said to be of (units stored by an earlier spidr-hf as int16 wrap past 32767): extract "
                "them again"
            )
        if self.identity.deduplicate:
            units = units[run_starts(units)]
        return [self.bos, *(int(unit) for unit in units), self.eos]


def lm_identity(config) -> UnitIdentity:
    """The identity of the units recorded in a unit LM's config; one line when it has none (not trained by
    spidr-hf)."""
    recorded = getattr(config, LM_CONFIG_KEY, None)
    if not isinstance(recorded, dict):
        raise SpidrError(
            f"The language model has no {LM_CONFIG_KEY} in its config: it was not trained on units by spidr-hf"
        )
    return UnitIdentity.from_dict(recorded)


def record_identity(config, identity: UnitIdentity) -> None:
    """Record in a unit LM's config the identity of the units it is trained on."""
    setattr(config, LM_CONFIG_KEY, identity.to_dict())


def describe(identity: UnitIdentity) -> str:
    return json.dumps(identity.to_dict())


def load_unit_lm(source: str | Path, device: str):
    """A unit LM (`training/train_ulm.py`'s output) in eval mode on `device`, and the identity of its units; one-line
    errors."""
    from transformers import AutoModelForCausalLM

    try:
        lm = AutoModelForCausalLM.from_pretrained(source)
    except (OSError, ValueError) as error:  # no such folder or repo, or a model that is no causal LM
        raise ModelLoadError(f"Cannot load the unit LM {source}: {' '.join(str(error).split())[:300]}") from error
    if not all(parameter.isfinite().all() for parameter in lm.parameters() if parameter.is_floating_point()):
        raise ModelLoadError(
            f"The unit LM {source} has weights that are not finite (NaN or infinite: its training diverged): it "
            "cannot score"
        )
    return lm.to(device).eval(), lm_identity(lm.config)


def iter_blocks(sequences: Iterable[list[int]], block_size: int, pad: int) -> Iterator[dict[str, list[int]]]:
    """
    Sequences end to end, cut into `block_size` blocks, one at a time (memory holds one block, whatever the corpus);
    the last one padded (its padding is not a target).
    """
    block: list[int] = []
    for sequence in sequences:
        for token in sequence:
            block.append(token)
            if len(block) == block_size:
                yield {"input_ids": block, "attention_mask": [1] * block_size, "labels": block}
                block = []
    if block:
        padding = block_size - len(block)
        yield {
            "input_ids": block + [pad] * padding,
            "attention_mask": [1] * len(block) + [0] * padding,
            "labels": block + [-100] * padding,
        }


@torch.no_grad()
def sequence_log_probs(
    model, sequences: Sequence[list[int]], pad: int, batch_size: int = 16, mean: bool = False
) -> list[float]:
    """
    log P(tokens[1:] | tokens[0]) of each token sequence under a causal LM: the sum over its tokens after BOS (the
    ZeroSpeech 2021 baselines' score), or with `mean` that sum over their number. Sequences are batched by length,
    right-padded; longer than the model's context, a sequence is an error.
    """
    limit = getattr(model.config, "max_position_embeddings", None)
    too_long = [len(sequence) for sequence in sequences if limit is not None and len(sequence) > limit]
    if too_long:
        raise SpidrError(
            f"{len(too_long)} sequence(s) are longer than the language model's context of {limit} tokens "
            f"(longest {max(too_long)}): deduplicate the units or use a model with a longer context"
        )
    device = next(model.parameters()).device
    scores = [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda index: -len(sequences[index]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        longest = len(sequences[batch[0]])
        ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, index in enumerate(batch):
            ids[row, : len(sequences[index])] = torch.tensor(sequences[index])
            mask[row, : len(sequences[index])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
        log_probs = (log_probs * mask[:, 1:].to(device)).sum(-1).cpu()
        if not log_probs.isfinite().all():  # a score of NaN would count as a lost pair: a 0 % accuracy
            raise SpidrError(
                "The language model gives log-probabilities that are not finite (NaN or infinite): its outputs "
                "overflow, in its dtype, or its weights are broken"
            )
        for row, index in enumerate(batch):
            value = log_probs[row].item()
            scores[index] = value / (len(sequences[index]) - 1) if mean else value
    return scores
