"""PNMI, purities, codebook perplexity, active codewords and bitrate of discrete units as an `evaluate` metric."""

import datasets
import evaluate

from spidr_hf.evaluation.units_quality import units_quality

_DESCRIPTION = """
Quality of discrete speech units against phone labels (HuBERT paper definitions): phone-normalized mutual information
(PNMI), phone purity, cluster purity, codebook perplexity, number of active codewords, and bitrate
(log2 of the number of units x deduplicated units per second). Units are at 20 ms, phone labels at 10 ms.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one utterance each: its units at 20 ms, integers in [0, num_units).
    references: one utterance each: its phone labels at 10 ms (about twice as many as the units).
    num_units: size of the unit inventory (codebook size or number of clusters).
Returns:
    pnmi, phone_purity, cluster_purity, codebook_perplexity, active_codewords, bitrate.
Example:
    >>> quality = evaluate.load(spidr_hf.evaluation.metric_path("units_quality"))
    >>> quality.compute(predictions=[[0, 1]], references=[["a", "a", "b", "b"]], num_units=2)["pnmi"]
    1.0
"""

_CITATION = """
@article{hsu2021hubert,
  title={HuBERT: Self-Supervised Speech Representation Learning by Masked Prediction of Hidden Units},
  author={Hsu, Wei-Ning and Bolte, Benjamin and Tsai, Yao-Hung Hubert and Lakhotia, Kushal and Salakhutdinov, Ruslan
    and Mohamed, Abdelrahman},
  journal={IEEE/ACM Transactions on Audio, Speech, and Language Processing},
  year={2021}
}
"""


class UnitsQuality(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        features = datasets.Features(
            {
                "predictions": datasets.List(datasets.Value("int64")),
                "references": datasets.List(datasets.Value("string")),
            }
        )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
        )

    def _compute(self, predictions, references, num_units: int) -> dict[str, float]:
        return units_quality(predictions, references, num_units)
