"""Silver pairs: new sentence pairs for para and sts, labelled by the teachers (Augmented SBERT,
Thakur et al. 2021).

A pair task's training file holds far fewer pairs than its sentences could form (Quora here: 13.5k
of the 141k official training pairs). New pairs are drawn among the training sentences themselves
by semantic search: each sentence is paired with its nearest neighbours under a teacher's sentence
embeddings (cosine), so that the new pairs are hard ones, not the random pairs that are almost all
"unrelated". The teachers then label them (`mtbert.distill.teacher_outputs`), and the student
trains on them like on the gold rows, with the teachers' labels as their gold labels.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from mtbert.batching import TokenizedTask
from mtbert.evaluate import map_rows
from mtbert.model.heads import pooled_dim
from mtbert.model.multitask import MultitaskBert

SILVER_PREFIX = "silver-"  # the ids of silver rows: silver-<task>-<n>, never a course id
CHUNK = 1024  # query rows per similarity block at most: (CHUNK, N) float32 at a time
BLOCK_ENTRIES = 2**25  # and at most this many similarities per block (128 MB), whatever N


def sentence_embeddings(model: MultitaskBert, data: TokenizedTask, batch_size: int,
                        precision: str = "fp32") -> np.ndarray:
    """L2-normalised pooled encoder vectors of single sentences, in row order: float32 (N, D).

    `data` holds one sequence per row (tokenized as for sst); the pooling is the model's own.
    """
    width = pooled_dim(model.encoder.config.hidden_size, model.cfg.pooling)
    return map_rows(model, data, batch_size,
                    lambda enc: torch.nn.functional.normalize(model.embed(enc).float(), dim=-1),
                    width, precision)


def neighbour_pairs(vectors: np.ndarray, n_pairs: int, exclude: Iterable[tuple[int, int]] = (),
                    seed: int = 0) -> list[tuple[int, int]]:
    """Up to `n_pairs` new pairs (i, j), i != j, of rows whose vectors are nearest neighbours.

    Every row proposes its nearest neighbour, then its second nearest, and so on (rank by rank,
    as far as needed); a pair proposed twice (i's neighbour j, j's neighbour i) counts once, and the
    pairs in `exclude` (either order) are never proposed. Within the last rank needed, a random
    subset (seeded) is kept, so that the pairs spread over all sentences rather than favour the
    first rows. Each pair is returned as (row, its neighbour), in the order of rank then draw.

    Args:
        vectors: (N, D) L2-normalised vectors (cosine = dot product).
        n_pairs: how many pairs to return at most; fewer when the rows' first 2 * ceil(n_pairs / N)
            + 4 neighbours hold fewer new pairs (as when the rows cannot form that many).
        exclude: pairs that exist already (the training pairs).
        seed: the draw within the last rank.
    """
    n = len(vectors)
    if n_pairs <= 0 or n < 2:
        return []
    seen = {(min(i, j), max(i, j)) for i, j in exclude}
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, int]] = []
    # the ranked neighbours of each row, computed once for as many ranks as could be needed
    ranks = min(n - 1, 2 * -(-n_pairs // n) + 4)
    neighbours = _ranked_neighbours(vectors, ranks)
    for rank in range(ranks):
        proposals = []
        for i in range(n):
            j = int(neighbours[i, rank])
            key = (min(i, j), max(i, j))
            if key not in seen:
                seen.add(key)
                proposals.append((i, j))
        if len(chosen) + len(proposals) > n_pairs:
            keep = rng.choice(len(proposals), size=n_pairs - len(chosen), replace=False)
            proposals = [proposals[k] for k in sorted(keep)]
        chosen.extend(proposals)
        if len(chosen) >= n_pairs:
            break
    return chosen


def _ranked_neighbours(vectors: np.ndarray, ranks: int) -> np.ndarray:
    """(N, ranks) row indices of each row's nearest other rows, nearest first (deterministic)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    out = np.empty((len(vectors), ranks), dtype=np.int64)
    step = max(1, min(CHUNK, BLOCK_ENTRIES // len(vectors)))
    for start in range(0, len(vectors), step):
        block = vectors[start:start + step] @ vectors.T  # (C, N) cosines
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # not itself
        if ranks < len(vectors) - 1:  # only the `ranks` best columns need sorting
            top = np.argpartition(-block, ranks - 1, axis=1)[:, :ranks]
        else:  # all of them (itself sorts last, at -inf, and is cut off)
            top = np.tile(np.arange(len(vectors)), (len(block), 1))
        scores = np.take_along_axis(block, top, axis=1)
        order = np.lexsort((top, -scores), axis=1)  # by score, then by index for ties
        out[start:start + len(block)] = np.take_along_axis(top, order, axis=1)[:, :ranks]
    return out


def unique_sentences(frame: pd.DataFrame) -> tuple[list[str], list[tuple[int, int]]]:
    """A pair table's distinct sentences (first seen first) and its pairs as index pairs into them."""
    index: dict[str, int] = {}
    for text in pd.concat([frame["sentence1"], frame["sentence2"]]):
        index.setdefault(text, len(index))
    pairs = [(index[a], index[b]) for a, b in zip(frame["sentence1"], frame["sentence2"])]
    return list(index), pairs


def silver_frame(task: str, sentences: list[str], pairs: list[tuple[int, int]]) -> pd.DataFrame:
    """The silver pairs as a prepared table without labels: id silver-<task>-<n>, sentence1, sentence2."""
    return pd.DataFrame({
        "id": [f"{SILVER_PREFIX}{task}-{k}" for k in range(len(pairs))],
        "sentence1": [sentences[i] for i, _ in pairs],
        "sentence2": [sentences[j] for _, j in pairs],
    })
