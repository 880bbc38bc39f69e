"""mtbert.silver (Augmented SBERT's silver pairs): nearest-neighbour pair sampling on vectors with
a known geometry, the sentence table, embeddings in row order, the config's checks, and the train
stage appending the teach stage's pairs (`project.with_silver`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtbert import silver
from mtbert.batching import TokenizedTask, pad
from mtbert.config import Config, ConfigError, DistillConfig, ModelConfig, PerTask, with_overrides
from mtbert.errors import UserError
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.pipeline.project import TEACH_MANIFEST, silver_path, with_silver
from mtbert.silver import neighbour_pairs, sentence_embeddings, silver_frame, unique_sentences
from tests.tiny import TINY_BERT_NO_DROPOUT


def on_circle(angles_deg: list[float]) -> np.ndarray:
    """Unit vectors at these angles: cosine order = angular distance order."""
    rad = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


# Three clusters of two: (0, 1) at 0/10 degrees, (2, 3) at 100/105, (4, 5) at 200/220.
CLUSTERS = on_circle([0, 10, 100, 105, 200, 220])


def brute_force_ranked(vectors: np.ndarray) -> list[list[int]]:
    sims = vectors @ vectors.T
    return [sorted((j for j in range(len(vectors)) if j != i), key=lambda j: (-sims[i, j], j))
            for i in range(len(vectors))]


def test_first_rank_pairs_each_row_with_its_nearest_neighbour_once() -> None:
    pairs = neighbour_pairs(CLUSTERS, n_pairs=3)
    # each row's nearest is its cluster mate; (0, 1) and (1, 0) are one pair
    assert pairs == [(0, 1), (2, 3), (4, 5)]


def test_existing_pairs_are_never_proposed_in_either_order() -> None:
    pairs = neighbour_pairs(CLUSTERS, n_pairs=100, exclude=[(1, 0), (2, 3)])
    keys = {tuple(sorted(p)) for p in pairs}
    assert (0, 1) not in keys and (2, 3) not in keys
    assert all(i != j for i, j in pairs)
    assert len(keys) == len(pairs)  # no pair twice, in either order
    # rank 1: only (4, 5) is new; rank 2: row 0's second nearest is row 2 (100 deg), not 3 (105)
    assert pairs[:3] == [(4, 5), (0, 2), (1, 2)]


def test_all_pairs_come_out_nearest_rank_first_and_no_more_than_exist() -> None:
    pairs = neighbour_pairs(CLUSTERS, n_pairs=1000)
    assert len(pairs) == 15  # 6 rows form 15 unordered pairs
    ranked = brute_force_ranked(CLUSTERS)
    rank_of = [ranked[i].index(j) for i, j in pairs]
    assert rank_of == sorted(rank_of)


def test_the_last_rank_is_a_seeded_draw_spread_over_the_rows() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    a = neighbour_pairs(vectors, n_pairs=50, seed=1)
    assert a == neighbour_pairs(vectors, n_pairs=50, seed=1)
    b = neighbour_pairs(vectors, n_pairs=50, seed=2)
    assert a != b and len(a) == len(b) == 50
    # rank 1 has more than 50 distinct pairs: all 50 are rank-1 pairs, drawn from all over the rows
    ranked = brute_force_ranked(vectors)
    assert all(ranked[i][0] == j for i, j in a)
    assert max(i for i, _ in a) > 150 and min(i for i, _ in a) < 50


def test_ranked_neighbours_across_similarity_blocks_match_brute_force(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(silver, "CHUNK", 7)  # blocks of 7 query rows: the diagonal offsets matter
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(30, 5)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    got = silver._ranked_neighbours(vectors, 4)
    assert got.tolist() == [row[:4] for row in brute_force_ranked(vectors)]
    # as many ranks as other rows: every other row once, itself never
    full = silver._ranked_neighbours(vectors[:5], 4)
    assert [sorted(r) for r in full.tolist()] == [[j for j in range(5) if j != i] for i in range(5)]


def test_nothing_asked_or_nothing_to_pair_gives_no_pairs() -> None:
    assert neighbour_pairs(CLUSTERS, n_pairs=0) == []
    assert neighbour_pairs(CLUSTERS[:1], n_pairs=5) == []


def test_unique_sentences_and_the_silver_table() -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "sentence1": ["x", "y"], "sentence2": ["y", "z"],
                          "label": [1, 0]})
    sentences, pairs = unique_sentences(frame)
    assert sentences == ["x", "y", "z"] and pairs == [(0, 1), (1, 2)]
    table = silver_frame("para", sentences, [(0, 2), (2, 1)])
    assert table.to_dict("list") == {"id": ["silver-para-0", "silver-para-1"],
                                     "sentence1": ["x", "z"], "sentence2": ["z", "y"]}


def test_sentence_embeddings_are_unit_vectors_of_the_model_pooling_in_row_order() -> None:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY_BERT_NO_DROPOUT), ModelConfig(pooling="mean"))
    g = torch.Generator().manual_seed(1)
    segments = [(([1, *torch.randint(5, 99, (n,), generator=g).tolist(), 2], [0] * (n + 2)),)
                for n in (5, 1, 9, 3, 7)]
    data = TokenizedTask("sst", segments, None)
    vectors = sentence_embeddings(model, data, batch_size=2)
    assert vectors.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for row, ((ids, types),) in enumerate(segments):  # each row alone, unpadded
        with torch.inference_mode():
            alone = model.embed(pad([(ids, types)]))
        np.testing.assert_allclose(vectors[row], torch.nn.functional.normalize(alone, dim=-1)[0],
                                   atol=1e-5)


def test_config_allows_silver_pairs_for_pair_tasks_only() -> None:
    assert DistillConfig(silver=PerTask(para=10, sts=0)).silver.para == 10
    with pytest.raises(ConfigError, match=r"silver\.sst: silver pairs are for the pair tasks"):
        DistillConfig(silver=PerTask(sst=5))
    with pytest.raises(ConfigError, match=r"silver\.para: must be >= 0"):
        DistillConfig(silver=PerTask(para=-1))
    with pytest.raises(ConfigError, match=r"silver\.sts: silver pairs need sts in train\.distill\.tasks"):
        DistillConfig(tasks=("sst",), silver=PerTask(sts=3))


def silver_config(tmp_path: Path, count: int | None) -> Config:
    cfg = Config()
    return with_overrides(cfg, {"train.distill": {"enabled": True, "teachers": ["t"],
                                                  "outputs_dir": str(tmp_path),
                                                  "silver": {"para": count}}})


def gold_frames() -> dict[str, pd.DataFrame]:
    para = pd.DataFrame({"id": ["q1", "q2"], "sentence1": ["a", "b"], "sentence2": ["c", "d"],
                         "label": [1, 0]})
    sst = pd.DataFrame({"id": ["s1"], "sentence1": ["good"], "label": [4]})
    return {"sst": sst, "para": para}


def write_silver(cfg: Config, requested: int, rows: int) -> None:
    table = silver_frame("para", ["a", "b", "c", "d"], [(0, 1), (2, 3), (0, 3)][:rows])
    table["label"] = [1] * rows
    table["extra"] = 0.5  # columns the gold rows lack are not carried over
    table.to_parquet(silver_path(cfg, "para"), index=False)
    manifest = {"enabled": True, "silver": {"para": {"requested": requested, "rows": rows}}}
    (Path(cfg.train.distill.outputs_dir) / TEACH_MANIFEST).write_text(json.dumps(manifest))


def test_with_silver_appends_the_teach_stage_pairs_after_the_gold_rows(tmp_path: Path) -> None:
    cfg = silver_config(tmp_path, 3)
    write_silver(cfg, requested=3, rows=3)
    frames = with_silver(cfg, gold_frames())
    para = frames["para"]
    assert list(para["id"]) == ["q1", "q2", "silver-para-0", "silver-para-1", "silver-para-2"]
    assert list(para.columns) == ["id", "sentence1", "sentence2", "label"]
    assert frames["sst"].equals(gold_frames()["sst"])
    # off: the file is ignored
    off = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, distill=dataclasses.replace(cfg.train.distill, silver=PerTask())))
    assert list(with_silver(off, gold_frames())["para"]["id"]) == ["q1", "q2"]


def test_with_silver_refuses_pairs_made_for_another_count_or_missing(tmp_path: Path) -> None:
    cfg = silver_config(tmp_path, 5)
    with pytest.raises(UserError, match=r"no silver para pairs made for train\.distill\.silver\.para=5"):
        with_silver(cfg, gold_frames())
    write_silver(cfg, requested=3, rows=3)  # the teach stage ran with silver.para=3
    with pytest.raises(UserError, match="run `mtbert teach`"):
        with_silver(cfg, gold_frames())


def test_the_silver_pairs_are_logged_as_a_training_input(tmp_path: Path) -> None:
    from mtbert.pipeline.stages.train import prepared_inputs

    inputs = prepared_inputs(silver_config(tmp_path, 3))
    assert (silver_path(silver_config(tmp_path, 3), "para"), "training") in inputs
    assert not any("silver" in str(path) for path, _ in prepared_inputs(silver_config(tmp_path, None)))


def test_similarity_blocks_shrink_with_the_number_of_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(silver, "BLOCK_ENTRIES", 30 * 4)  # 30 rows: blocks of 4 rows, not CHUNK
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(30, 5)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert silver._ranked_neighbours(vectors, 3).tolist() == [r[:3] for r in brute_force_ranked(vectors)]


def test_an_unreadable_teach_manifest_counts_as_no_pairs_made(tmp_path: Path) -> None:
    cfg = silver_config(tmp_path, 3)
    write_silver(cfg, requested=3, rows=3)
    (tmp_path / TEACH_MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match=r"silver\.para=3 \(run `mtbert teach`"):
        with_silver(cfg, gold_frames())
