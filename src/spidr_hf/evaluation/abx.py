"""
ABX error rate of phone tokens, with the ZeroSpeech 2021 / Libri-Light definitions as implemented by fastabx.

A triplet (A, B, X) has A and X of one phone and B of another, all in the same triphone context; within-speaker,
A, B and X share a speaker; across-speaker, A and B share a speaker and X has another one. The triplet is an error
when d(A, X) > d(B, X) (half an error on a tie). A cell gathers the triplets of one (phone of A, phone of B, context,
speaker of A and B[, speaker of X]); its error rate is averaged over contexts (and X speakers), then over speakers,
then over the pairs of phones. The distance between two tokens is the DTW of their frame-to-frame distances divided
by the length of the alignment path: "angular" (arccos of the cosine similarity, over pi) for continuous features,
"identical" (0 for the same unit, 1 otherwise) for discrete units. The latter equals twice the angular distance of
one-hot unit vectors, and the ABX decisions are the same with either.

Implemented here rather than taken from fastabx, which needs Python >= 3.12 (this project supports 3.11). The pairwise
DTWs run batched in torch (anti-diagonal wavefront), and each (context, speaker) group is scored with tensor ops.
"""

import math
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Distance = Literal["angular", "identical"]
# Work sizes: frame-distance values held at once for the DTW of a batch of contexts, and DTW lattice cells per chunk
_MAX_FRAME_PAIRS = 1 << 24
_MAX_DTW_CELLS = 1 << 21


def abx_error(
    tokens: Sequence[torch.Tensor | np.ndarray],
    phones: Sequence[Hashable],
    contexts: Sequence[Hashable],
    speakers: Sequence[Hashable],
    *,
    distance: Distance = "angular",
    max_size_group: int | None = 10,
    max_x_across: int | None = 5,
    seed: int = 0,
) -> dict[str, float]:
    """
    ABX error rates in percent, `{"within": ..., "across": ...}` (NaN where no triplet exists, e.g. across-speaker
    with a single speaker).

    Args:
        tokens: one tensor per token: `(frames, dim)` floats for "angular", `(frames,)` integer units for "identical".
        phones, contexts, speakers: the token's phone, context (e.g. the (previous, next) phone pair) and speaker.
        distance: "angular" for continuous features, "identical" for discrete units.
        max_size_group: keep at most this many tokens of each (phone, context, speaker), drawn at random; None keeps
            all. ZeroSpeech uses 10.
        max_x_across: across-speaker, use at most this many X speakers, drawn at random, for each (phone of A, phone
            of B, context, speaker). None uses all. ZeroSpeech uses 5.
        seed: seed of the random draws.
    """
    with _one_cpu_thread():
        return _abx_error(tokens, phones, contexts, speakers, distance, max_size_group, max_x_across, seed)


@contextmanager
def _one_cpu_thread() -> Iterator[None]:
    """
    Run torch on one CPU thread: ABX is thousands of small tensor operations, for which OpenMP's thread hand-offs cost
    more than the work (on a busy 2-core machine, 20 times more than the work itself).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _abx_error(
    tokens: Sequence,
    phones: Sequence[Hashable],
    contexts: Sequence[Hashable],
    speakers: Sequence[Hashable],
    distance: Distance,
    max_size_group: int | None,
    max_x_across: int | None,
    seed: int,
) -> dict[str, float]:
    flat, lengths = _check_tokens(tokens, distance)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if not len(phones) == len(contexts) == len(speakers) == len(lengths):
        raise ValueError(
            f"Got {len(lengths)} tokens but {len(phones)} phones, {len(contexts)} contexts, {len(speakers)} speakers"
        )
    for name, value in (("max_size_group", max_size_group), ("max_x_across", max_x_across)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 or None, got {value}")
    labels = np.stack([_codes(phones), _codes(contexts), _codes(speakers)], axis=1)
    rng = np.random.default_rng(seed)
    keep = _subsample(labels, max_size_group, rng)
    # Tokens of one context, then of one speaker in it, are consecutive from here on
    keep = keep[np.lexsort((labels[keep, 2], labels[keep, 1]))]
    labels, lengths = labels[keep], lengths[keep]
    frames = torch.cat([flat[offsets[i] : offsets[i + 1]] for i in keep])
    if distance == "angular":
        frames = F.normalize(frames.float(), dim=-1)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    context_bounds = _runs(labels[:, 1])
    # A context needs three tokens for a triplet
    scored = [(lo, hi) for lo, hi in context_bounds if hi - lo >= 3]
    matrices = _pairwise_dtw(frames, starts, lengths, scored, distance)
    within, across = [], []
    for (lo, hi), matrix in zip(scored, matrices, strict=True):
        within.append(_within_cells(matrix, labels[lo:hi]))
        across.append(_across_cells(matrix, labels[lo:hi], max_x_across, rng))
    return {"within": _collapse(within), "across": _collapse(across)}


def _check_tokens(tokens: Sequence, distance: Distance) -> tuple[torch.Tensor, np.ndarray]:
    """Concatenate the tokens' frames after checking their shapes against the distance."""
    if distance not in ("angular", "identical"):
        raise ValueError(f"Unknown distance {distance!r}: use 'angular' or 'identical'")
    if len(tokens) == 0:
        raise ValueError("No ABX tokens")
    tensors = [torch.as_tensor(token) for token in tokens]
    expected_dims = 2 if distance == "angular" else 1
    for index, tensor in enumerate(tensors):
        if tensor.dim() != expected_dims or tensor.shape[0] == 0:
            kind = "(frames, dim) features" if distance == "angular" else "(frames,) units"
            raise ValueError(f"Token {index} has shape {tuple(tensor.shape)}; the {distance} distance needs {kind}")
    if distance == "identical" and any(tensor.is_floating_point() for tensor in tensors):
        raise ValueError("The identical distance compares discrete units: pass integer tensors")
    if distance == "angular" and len({tensor.shape[1] for tensor in tensors}) > 1:
        raise ValueError("All tokens must have the same feature dimension")
    return torch.cat(tensors), np.array([len(tensor) for tensor in tensors])


def _codes(values: Sequence[Hashable]) -> np.ndarray:
    """Integer codes of hashable labels, in sorted order of the labels' string forms (deterministic)."""
    distinct = sorted(set(values), key=str)
    index = {value: code for code, value in enumerate(distinct)}
    return np.array([index[value] for value in values], dtype=np.int64)


def _subsample(labels: np.ndarray, max_size: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `max_size` random tokens of each distinct label row, in increasing order."""
    if max_size is None:
        return np.arange(len(labels))
    order = rng.permutation(len(labels))
    _, groups = np.unique(labels[order], axis=0, return_inverse=True)
    by_group = np.argsort(groups, kind="stable")
    sorted_groups = groups[by_group]
    group_starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    run_lengths = np.diff(np.r_[group_starts, len(labels)])
    ranks = np.empty(len(labels), dtype=np.int64)
    ranks[by_group] = np.arange(len(labels)) - np.repeat(group_starts, run_lengths)
    return np.sort(order[ranks < max_size])


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) bounds of the runs of equal consecutive values."""
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _frame_distances(frames: torch.Tensor, distance: Distance) -> torch.Tensor:
    """All frame-to-frame distances of one group of frames (rows of unit-norm features, or units)."""
    if distance == "angular":
        return (frames @ frames.T).clamp_(-1.0, 1.0).acos_().div_(math.pi)
    return (frames[:, None] != frames[None, :]).float()


def _pairwise_dtw(
    frames: torch.Tensor, starts: np.ndarray, lengths: np.ndarray, groups: list[tuple[int, int]], distance: Distance
) -> list[torch.Tensor]:
    """Token-by-token DTW distance matrix of each group of consecutive tokens `[lo, hi)`."""
    matrices: list[torch.Tensor] = []
    batch, batch_size = [], 0
    for lo, hi in groups:
        group_frames = int(lengths[lo:hi].sum())
        if batch and batch_size + group_frames**2 > _MAX_FRAME_PAIRS:
            matrices += _pairwise_dtw_batch(frames, starts, lengths, batch, distance)
            batch, batch_size = [], 0
        batch.append((lo, hi))
        batch_size += group_frames**2
    if batch:
        matrices += _pairwise_dtw_batch(frames, starts, lengths, batch, distance)
    return matrices


def _pairwise_dtw_batch(
    frames: torch.Tensor, starts: np.ndarray, lengths: np.ndarray, groups: list[tuple[int, int]], distance: Distance
) -> list[torch.Tensor]:
    """DTW of every pair of tokens within each group, from one flat buffer of the groups' frame-distance blocks."""
    blocks, bases, strides, rows, cols, pairs = [], [], [], [], [], []
    buffer_offset = 0
    for lo, hi in groups:
        first, stop = starts[lo], starts[hi - 1] + lengths[hi - 1]
        block = _frame_distances(frames[first:stop], distance)
        size = stop - first
        i, j = np.triu_indices(hi - lo, k=1)
        # Index in the flat buffer of the top-left frame pair of each token pair
        bases.append(buffer_offset + (starts[lo + i] - first) * size + (starts[lo + j] - first))
        strides.append(np.full(len(i), size))
        rows.append(lengths[lo + i])
        cols.append(lengths[lo + j])
        pairs.append((i, j))
        blocks.append(block.flatten())
        buffer_offset += size * size
    values = _dtw_pairs(
        torch.cat(blocks), np.concatenate(bases), np.concatenate(strides), np.concatenate(rows), np.concatenate(cols)
    )
    matrices, done = [], 0
    for (lo, hi), (i, j) in zip(groups, pairs, strict=True):
        matrix = frames.new_zeros((hi - lo, hi - lo), dtype=torch.float32)
        pair_values = values[done : done + len(i)]
        matrix[i, j] = pair_values
        matrix[j, i] = pair_values
        matrices.append(matrix)
        done += len(i)
    return matrices


def _dtw_pairs(
    buffer: torch.Tensor, bases: np.ndarray, strides: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> torch.Tensor:
    """DTW of each pair: its `rows x cols` frame distances start at `bases` in `buffer`, rows `strides` apart."""
    values = buffer.new_empty(len(bases))
    order = np.lexsort((cols, rows))  # pairs with the same number of rows together, so that padding stays small
    for lo, hi in _runs(rows[order]):
        num_rows, num_cols = int(rows[order[lo]]), int(cols[order[lo:hi]].max())
        chunk_size = max(1, _MAX_DTW_CELLS // ((num_rows + 1) * (num_cols + 1)))
        for first in range(lo, hi, chunk_size):
            chunk = order[first : min(first + chunk_size, hi)]
            values[torch.as_tensor(chunk, device=buffer.device)] = _dtw_chunk(
                buffer, bases[chunk], strides[chunk], num_rows, cols[chunk]
            )
    return values


def _dtw_chunk(buffer: torch.Tensor, bases: np.ndarray, strides: np.ndarray, num_rows: int, cols: np.ndarray):
    """DTW of pairs with `num_rows` rows each, their frame distances gathered from `buffer` into a padded batch."""
    device = buffer.device
    num_cols = int(cols.max())
    base = torch.as_tensor(bases, device=device)[:, None, None]
    stride = torch.as_tensor(strides, device=device)[:, None, None]
    pair_cols = torch.as_tensor(cols, device=device)
    u = torch.arange(num_rows, device=device)[None, :, None]
    v = torch.arange(num_cols, device=device)[None, None, :]
    index = torch.where(v < pair_cols[:, None, None], base + u * stride + v, base)  # padding reads a valid cell
    pair_rows = torch.full_like(pair_cols, num_rows)
    return dtw(buffer[index], pair_rows, pair_cols)


def dtw(costs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """
    Batched DTW of `(batch, N, M)` frame-distance matrices, item b valid on its top-left `rows[b] x cols[b]` block.

    Returns the minimal cost of a monotonic path from the first to the last frame pair (steps right, down or diagonal)
    divided by the number of cells on that path, ties broken towards the diagonal, then the step along the columns,
    as in the ZeroSpeech / fastabx DTW. Cells are filled one anti-diagonal at a time for the whole batch.
    """
    batch, num_rows, num_cols = costs.shape
    cumulated = costs.new_full((batch, num_rows + 1, num_cols + 1), float("inf"))
    cumulated[:, 0, 0] = 0.0
    path_lengths = torch.zeros_like(cumulated)
    for diagonal in range(2, num_rows + num_cols + 1):  # 1-based cells (i, j) with i + j = diagonal
        i = torch.arange(max(1, diagonal - num_cols), min(num_rows, diagonal - 1) + 1, device=costs.device)
        j = diagonal - i
        from_diagonal, from_left, from_up = cumulated[:, i - 1, j - 1], cumulated[:, i, j - 1], cumulated[:, i - 1, j]
        take_diagonal = (from_diagonal <= from_left) & (from_diagonal <= from_up)
        take_left = ~take_diagonal & (from_left <= from_up)
        best = torch.where(take_diagonal, from_diagonal, torch.where(take_left, from_left, from_up))
        length = torch.where(
            take_diagonal,
            path_lengths[:, i - 1, j - 1],
            torch.where(take_left, path_lengths[:, i, j - 1], path_lengths[:, i - 1, j]),
        )
        cumulated[:, i, j] = costs[:, i - 1, j - 1] + best
        path_lengths[:, i, j] = length + 1
    items = torch.arange(batch, device=costs.device)
    return cumulated[items, rows, cols] / path_lengths[items, rows, cols]


def _error_sums(
    distances: torch.Tensor, x_phones: torch.Tensor, ab_phones: torch.Tensor, num_phones: int, same_set: bool
) -> torch.Tensor:
    """
    `(num_x, num_phones)`: for each X (a row of `distances` to the A/B candidates) and each phone q, the sum over A
    (X's phone; not X itself when the rows are the candidates themselves) and B (phone q) of the triplet errors.
    """
    is_a = x_phones[:, None] == ab_phones[None, :]
    if same_set:
        is_a &= ~torch.eye(len(x_phones), dtype=torch.bool, device=distances.device)
    b_phones = F.one_hot(ab_phones, num_phones).to(distances.dtype)
    sums = []
    rows_per_chunk = max(1, _MAX_FRAME_PAIRS // distances.shape[1] ** 2)
    for first in range(0, len(distances), rows_per_chunk):
        chunk = distances[first : first + rows_per_chunk]
        # error(x, a, b) = 1 if d(a, x) > d(b, x), 1/2 if equal, 0 otherwise
        errors = (torch.sign(chunk[:, :, None] - chunk[:, None, :]) + 1) / 2
        errors_per_b = torch.einsum("xa,xab->xb", is_a[first : first + rows_per_chunk].to(errors.dtype), errors)
        sums.append(errors_per_b @ b_phones)
    return torch.cat(sums)


def _within_cells(matrix: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Rows (phone of A and X, phone of B, speaker, error rate) for the within-speaker cells of one context."""
    cells = []
    num_phones = int(labels[:, 0].max()) + 1
    for lo, hi in _runs(labels[:, 2]):
        phones = torch.as_tensor(labels[lo:hi, 0], device=matrix.device)
        sums = _error_sums(matrix[lo:hi, lo:hi], phones, phones, num_phones, same_set=True)
        by_phone = F.one_hot(phones, num_phones).to(sums.dtype).T @ sums  # [phone of A and X, phone of B]
        counts = torch.bincount(phones, minlength=num_phones).to(sums.dtype)
        triplets = (counts * (counts - 1))[:, None] * counts[None, :]
        valid = (triplets > 0) & ~torch.eye(num_phones, dtype=torch.bool, device=matrix.device)
        a, b = valid.nonzero().T
        rates = (by_phone[a, b] / triplets[a, b]).cpu().numpy()
        speaker = np.full(len(rates), labels[lo, 2])
        cells.append(np.stack([a.cpu().numpy(), b.cpu().numpy(), speaker, rates], axis=1))
    return np.concatenate(cells)


def _across_cells(
    matrix: torch.Tensor, labels: np.ndarray, max_x_across: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Rows (phone of A and X, phone of B, speaker of A and B, error rate) for the across-speaker cells of a context."""
    cells = []
    num_phones = int(labels[:, 0].max()) + 1
    phones = torch.as_tensor(labels[:, 0], device=matrix.device)
    speakers = torch.as_tensor(labels[:, 2], device=matrix.device)
    for lo, hi in _runs(labels[:, 2]):
        others = torch.cat([torch.arange(0, lo), torch.arange(hi, len(labels))]).to(matrix.device)
        if len(others) == 0:
            continue
        ab_phones, x_phones = phones[lo:hi], phones[others]
        sums = _error_sums(matrix[others][:, lo:hi], x_phones, ab_phones, num_phones, same_set=False)
        # One cell per (phone of X, speaker of X) and phone of B
        keys, x_groups = torch.unique(torch.stack([x_phones, speakers[others]], 1), dim=0, return_inverse=True)
        group_sums = F.one_hot(x_groups, len(keys)).to(sums.dtype).T @ sums
        ab_counts = torch.bincount(ab_phones, minlength=num_phones).to(sums.dtype)
        x_counts = torch.bincount(x_groups, minlength=len(keys)).to(sums.dtype)
        a_phones = keys[:, 0]
        triplets = (ab_counts[a_phones] * x_counts)[:, None] * ab_counts[None, :]
        valid = (triplets > 0) & (a_phones[:, None] != torch.arange(num_phones, device=matrix.device))
        group, b = valid.nonzero().T
        a = a_phones[group].cpu().numpy()
        b = b.cpu().numpy()
        rates = (group_sums[group, b] / triplets[group, b]).cpu().numpy()
        # Each (A, B) pair has one cell per X speaker: keep at most max_x_across of them
        keep = _subsample(np.stack([a, b], axis=1), max_x_across, rng)
        speaker = np.full(len(keep), labels[lo, 2])
        cells.append(np.stack([a[keep], b[keep], speaker, rates[keep]], axis=1))
    return np.concatenate(cells) if cells else np.empty((0, 4))


def _collapse(cells: list[np.ndarray]) -> float:
    """Mean error over contexts (and X speakers) per (A, B, speaker), then over speakers, then over (A, B); in %."""
    table = np.concatenate([np.empty((0, 4)), *cells])
    if len(table) == 0:
        return float("nan")
    keys, per_speaker = np.unique(table[:, :3], axis=0, return_inverse=True)
    speaker_means = np.bincount(per_speaker, weights=table[:, 3]) / np.bincount(per_speaker)
    _, per_pair = np.unique(keys[:, :2], axis=0, return_inverse=True)
    pair_means = np.bincount(per_pair, weights=speaker_means) / np.bincount(per_pair)
    return float(100 * pair_means.mean())
