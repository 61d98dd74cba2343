"""ABX error rate of phone tokens (ZeroSpeech 2021 definitions) as an `evaluate` metric."""

import datasets
import evaluate
import torch

from spidr_hf.evaluation.abx import abx_error

_DESCRIPTION = """
ABX error rate (%) of phone tokens, within and across speakers, as in ZeroSpeech 2021 / fastabx: triplets (A, B, X)
with A and X of one phone, B of another, all in one context; a triplet is an error when X is closer to B than to A
(DTW of frame-to-frame distances, normalized by the path length). Errors are averaged over contexts, then speakers,
then phone pairs. Configuration "default" takes continuous features (angular distance), "units" discrete units
(0/1 distance).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one token each: a list of frames, each a list of floats ("default"), or a list of integer units
        ("units").
    references: the phone of each token.
    contexts: the context of each token, e.g. "prev-next" phones.
    speakers: the speaker of each token.
    max_size_group: at most this many tokens per (phone, context, speaker), drawn at random; None for all (10).
    max_x_across: across-speaker, at most this many X speakers per cell group; None for all (5).
    seed: seed of the random draws (0).
Returns:
    abx_within, abx_across: error rates in percent (NaN when no triplet exists).
Example:
    >>> abx = evaluate.load(spidr_hf.evaluation.metric_path("abx"))
    >>> abx.compute(predictions=[[[1.0, 0.0]], [[0.9, 0.1]], [[0.0, 1.0]]], references=["a", "a", "b"],
    ...             contexts=["x-y"] * 3, speakers=["s"] * 3)
    {'abx_within': 0.0, 'abx_across': nan}
"""

_CITATION = """
@inproceedings{nguyen2020zero,
  title={The Zero Resource Speech Benchmark 2021: Metrics and baselines for unsupervised spoken language modeling},
  author={Nguyen, Tu Anh and de Seyssel, Maureen and Roz{\\'e}, Patricia and Rivi{\\`e}re, Morgane and Kharitonov,
    Evgeny and Baevski, Alexei and Dunbar, Ewan and Dupoux, Emmanuel},
  booktitle={NeurIPS Workshop on Self-Supervised Learning for Speech and Audio Processing},
  year={2020}
}
"""

_FRAMES = {
    "default": datasets.List(datasets.List(datasets.Value("float32"))),
    "units": datasets.List(datasets.Value("int64")),
}


class Abx(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in _FRAMES:
            raise ValueError(f"Unknown configuration {self.config_name!r}: use 'default' (features) or 'units'")
        features = datasets.Features(
            {
                "predictions": _FRAMES[self.config_name],
                "references": datasets.Value("string"),
                "contexts": datasets.Value("string"),
                "speakers": datasets.Value("string"),
            }
        )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
        )

    def _compute(
        self,
        predictions,
        references,
        contexts,
        speakers,
        max_size_group: int | None = 10,
        max_x_across: int | None = 5,
        seed: int = 0,
    ) -> dict[str, float]:
        units = self.config_name == "units"
        tokens = [torch.tensor(token, dtype=torch.int64 if units else torch.float32) for token in predictions]
        scores = abx_error(
            tokens,
            references,
            contexts,
            speakers,
            distance="identical" if units else "angular",
            max_size_group=max_size_group,
            max_x_across=max_x_across,
            seed=seed,
        )
        return {f"abx_{mode}": value for mode, value in scores.items()}
