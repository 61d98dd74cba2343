"""ABX error rates and DTW on hand-made tokens with exactly known answers, and against a brute-force reference."""

import itertools
import math

import evaluate
import numpy as np
import pytest
import torch

from spidr_hf.evaluation import abx_error, dtw, metric_path

E1, E2 = [1.0, 0.0], [0.0, 1.0]


def _reference_dtw(costs: np.ndarray) -> float:
    """Textbook DTW with path-length normalization, backtracking with ties to the diagonal, then the column step."""
    rows, cols = costs.shape
    total = np.full((rows + 1, cols + 1), np.inf)
    total[0, 0] = 0
    for i, j in itertools.product(range(1, rows + 1), range(1, cols + 1)):
        total[i, j] = costs[i - 1, j - 1] + min(total[i - 1, j - 1], total[i, j - 1], total[i - 1, j])
    i, j, length = rows, cols, 1
    while (i, j) != (1, 1):
        candidates = [(total[i - 1, j - 1], i - 1, j - 1), (total[i, j - 1], i, j - 1), (total[i - 1, j], i - 1, j)]
        _, i, j = min(candidates, key=lambda candidate: candidate[0])  # min keeps the first of equal costs
        length += 1
    return total[rows, cols] / length


def _token_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(y, dim=-1)
    return _reference_dtw(((x @ y.T).clamp(-1, 1).acos() / math.pi).double().numpy())


def _reference_abx(tokens, phones, contexts, speakers, mode: str) -> float:
    """Definition, loop by loop: cells (A phone, B phone, context, speaker[, X speaker]) averaged in three levels."""
    n = len(tokens)
    cells: dict[tuple, list[float]] = {}
    for context, speaker, phone_a, phone_b in itertools.product(set(contexts), set(speakers), set(phones), set(phones)):
        if phone_a == phone_b:
            continue
        group = [i for i in range(n) if contexts[i] == context and speakers[i] == speaker]
        a_set = [i for i in group if phones[i] == phone_a]
        b_set = [i for i in group if phones[i] == phone_b]
        x_speakers = [speaker] if mode == "within" else sorted(set(speakers) - {speaker})
        for x_speaker in x_speakers:
            x_set = [i for i in range(n) if (contexts[i], speakers[i], phones[i]) == (context, x_speaker, phone_a)]
            errors = []
            for a, b, x in itertools.product(a_set, b_set, x_set):
                if a != x:
                    d_ax, d_bx = _token_distance(tokens[a], tokens[x]), _token_distance(tokens[b], tokens[x])
                    errors.append(1.0 if d_ax > d_bx else 0.5 if d_ax == d_bx else 0.0)
            if errors:
                cells.setdefault((phone_a, phone_b, speaker), []).append(np.mean(errors))
    by_pair: dict[tuple, list[float]] = {}
    for (phone_a, phone_b, _), rates in cells.items():
        by_pair.setdefault((phone_a, phone_b), []).append(np.mean(rates))
    return 100 * np.mean([np.mean(rates) for rates in by_pair.values()])


def _abx(tokens, phones, contexts, speakers, **kwargs):
    tokens = [torch.tensor(token, dtype=torch.float32) for token in tokens]
    return abx_error(tokens, phones, contexts, speakers, max_size_group=None, max_x_across=None, **kwargs)


def test_dtw_of_hand_made_matrices():
    costs = torch.zeros(3, 2, 3)
    costs[0, 0] = torch.tensor([1.0, 2.0, 3.0])  # a single row: the path visits all 3 cells, (1 + 2 + 3) / 3
    costs[1] = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # diagonal then right: 0 / 3
    costs[2] = torch.tensor([[0.5, 9.0, 9.0], [9.0, 9.0, 9.0]])  # a 1 x 1 block of a padded batch
    values = dtw(costs, torch.tensor([1, 2, 1]), torch.tensor([3, 3, 1]))
    assert values.tolist() == pytest.approx([2.0, 0.0, 0.5])


@pytest.mark.parametrize("discrete", [False, True])
def test_dtw_matches_reference(discrete):
    generator = torch.Generator().manual_seed(0)
    costs = torch.rand(64, 6, 7, generator=generator, dtype=torch.float64)
    if discrete:  # many equal-cost paths: the tie-breaking decides the path length
        costs = costs.round()
    rows = torch.randint(1, 7, (64,), generator=generator)
    cols = torch.randint(1, 8, (64,), generator=generator)
    expected = [_reference_dtw(costs[b, : rows[b], : cols[b]].numpy()) for b in range(64)]
    assert dtw(costs, rows, cols).tolist() == pytest.approx(expected, abs=1e-12)


def test_perfectly_separable_phones_give_zero():
    phones = ["a", "b"] * 6
    tokens = [[E1, E1] if phone == "a" else [E2] for phone in phones]
    speakers = ["s1"] * 6 + ["s2"] * 6
    contexts = ["x-y"] * 12
    assert _abx(tokens, phones, contexts, speakers) == {"within": 0.0, "across": 0.0}


def test_identical_tokens_give_fifty():
    phones = ["a", "b", "c"] * 4
    speakers = ["s1", "s2"] * 6
    assert _abx([[E1]] * 12, phones, ["x-y"] * 12, speakers) == {"within": 50.0, "across": 50.0}


def test_small_case_computed_by_hand():
    """One context and speaker: a1 at 0 deg, a2 at 30 deg, b1 at 90 deg, b2 at 20 deg (one frame each)."""
    angles = {"a1": 0, "a2": 30, "b1": 90, "b2": 20}
    tokens = [[[math.cos(math.radians(d)), math.sin(math.radians(d))]] for d in angles.values()]
    # Cell (A=a, B=b): X=a1 (A=a2, 30 deg away) is closer to b2 (20): 1 error in 2; X=a2 (A=a1, 30) closer to b2
    # (10): 1 in 2. Cell (A=b, B=a): X=b1 (A=b2, 70) closer to a2 (60); X=b2 (A=b1, 70) closer to a1 and a2: 3 in 4.
    scores = _abx(tokens, ["a", "a", "b", "b"], ["x-y"] * 4, ["s"] * 4)
    assert scores["within"] == pytest.approx(100 * (2 / 4 + 3 / 4) / 2)
    assert math.isnan(scores["across"])  # a single speaker: no X from another one


def test_within_and_across_speaker_select_different_triplets():
    """Speaker s2 says "a" the way s1 says "b": perfect within each speaker, always wrong across them."""
    phones = ["a", "a", "b", "b"] * 2
    speakers = ["s1"] * 4 + ["s2"] * 4
    tokens = [[E1], [E1], [E2], [E2], [E2], [E2], [E1], [E1]]
    assert _abx(tokens, phones, ["x-y"] * 8, speakers) == {"within": 0.0, "across": 100.0}


def test_triplets_stay_within_a_context():
    """Separable inside each context, with the two phones swapped between contexts."""
    phones = ["a", "a", "b", "b"] * 2
    tokens = [[E1], [E1], [E2], [E2], [E2], [E2], [E1], [E1]]
    contexts = ["p-q"] * 4 + ["r-s"] * 4
    assert _abx(tokens, phones, contexts, ["s"] * 8)["within"] == 0.0
    # Ignoring contexts, each X meets 1 same and 2 opposite A, and 2 same and 2 opposite B: 7 errors in 12
    assert _abx(tokens, phones, ["any"] * 8, ["s"] * 8)["within"] == pytest.approx(100 * 7 / 12)


def test_errors_average_over_contexts_before_speakers():
    """Speaker s1 has one perfect and one failed context, s2 one perfect context: (0 + 100) / 2, then with 0."""
    phones = ["a", "a", "b"] * 3
    speakers = ["s1"] * 6 + ["s2"] * 3
    contexts = ["p-q"] * 3 + ["r-s"] * 3 + ["p-q"] * 3
    between = [math.sqrt(0.5), math.sqrt(0.5)]
    tokens = [[E1], [E1], [E2], [E1], [E2], [between], [E1], [E1], [E2]]
    # In r-s for s1 the two a are 90 degrees apart and b lies 45 degrees from each: both triplets are errors.
    # Pair (a, b): s1 -> mean(0, 100) = 50, s2 -> 0; mean over speakers 25. Pair (b, a) has no cell (one b each).
    assert _abx(tokens, phones, contexts, speakers)["within"] == pytest.approx(25.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    n = 40
    phones = rng.choice(["a", "b", "c"], n).tolist()
    contexts = rng.choice(["p-q", "r-s"], n).tolist()
    speakers = rng.choice(["s1", "s2", "s3"], n).tolist()
    centres = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}
    tokens = [
        torch.tensor(centres[phone]) + torch.tensor(rng.normal(size=(int(rng.integers(1, 5)), 3)), dtype=torch.float32)
        for phone in phones
    ]
    scores = abx_error(tokens, phones, contexts, speakers, max_size_group=None, max_x_across=None)
    for mode in ("within", "across"):
        assert scores[mode] == pytest.approx(_reference_abx(tokens, phones, contexts, speakers, mode), abs=1e-4)


def test_discrete_units():
    phones = ["a", "a", "b", "b"] * 2
    speakers = ["s1"] * 4 + ["s2"] * 4
    units = [torch.tensor([3, 3]), torch.tensor([3]), torch.tensor([5, 5, 5]), torch.tensor([5])] * 2
    scores = abx_error(units, phones, ["x-y"] * 8, speakers, distance="identical")
    assert scores == {"within": 0.0, "across": 0.0}
    same = abx_error([torch.tensor([1, 2])] * 8, phones, ["x-y"] * 8, speakers, distance="identical")
    assert same == {"within": 50.0, "across": 50.0}


def test_subsampling_limits_groups_and_is_seeded():
    rng = np.random.default_rng(0)
    phones = ["a", "b"] * 30
    tokens = [torch.tensor(rng.normal(size=(2, 4)), dtype=torch.float32) + (phone == "a") for phone in phones]
    speakers = ["s1", "s1", "s2", "s2", "s3", "s3"] * 10
    contexts = ["x-y"] * 60
    full = abx_error(tokens, phones, contexts, speakers, max_size_group=None, max_x_across=None)
    small = abx_error(tokens, phones, contexts, speakers, max_size_group=3, max_x_across=1, seed=3)
    assert small == abx_error(tokens, phones, contexts, speakers, max_size_group=3, max_x_across=1, seed=3)
    assert small != full
    # One token per (phone, context, speaker) leaves no A besides X within a speaker
    alone = abx_error(tokens, phones, contexts, speakers, max_size_group=1)
    assert math.isnan(alone["within"]) and not math.isnan(alone["across"])


@pytest.mark.parametrize(
    ("tokens", "kwargs", "message"),
    [
        ([], {}, "No ABX tokens"),
        ([torch.zeros(0, 2)] * 3, {}, "shape"),
        ([torch.zeros(2)] * 3, {}, "shape"),
        ([torch.ones(2, 2), torch.ones(2, 3), torch.ones(1, 2)], {}, "same feature dimension"),
        ([torch.ones(2)] * 3, {"distance": "identical"}, "integer"),
        ([torch.ones(2, 2)] * 3, {"distance": "euclidean"}, "Unknown distance"),
        ([torch.ones(2, 2)] * 3, {"max_size_group": 0}, "max_size_group"),
    ],
)
def test_bad_input(tokens, kwargs, message):
    with pytest.raises(ValueError, match=message):
        abx_error(tokens, ["a", "b", "a"][: len(tokens)], ["c"] * len(tokens), ["s"] * len(tokens), **kwargs)


def test_label_count_mismatch():
    with pytest.raises(ValueError, match=r"3 tokens.*2 phones"):
        abx_error([torch.ones(1, 2)] * 3, ["a", "b"], ["c"] * 3, ["s"] * 3)


def test_evaluate_metric_module():
    tokens = [[E1], [E1], [E2], [E2]]
    args = {"references": ["a", "a", "b", "b"], "contexts": ["x-y"] * 4, "speakers": ["s"] * 4}
    abx = evaluate.load(metric_path("abx"))
    scores = abx.compute(predictions=tokens, max_size_group=None, **args)
    assert scores["abx_within"] == 0.0 and math.isnan(scores["abx_across"])
    units = evaluate.load(metric_path("abx"), "units")
    assert units.compute(predictions=[[1], [1], [1], [1]], **args)["abx_within"] == 50.0
