"""Progress hooks of the core prediction loops, and the tuning progress bar and trial history."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from mtbert.batching import TokenizedTask
from mtbert.config import ModelConfig
from mtbert.evaluate import predict
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.pipeline.serving import predict_rows
from tests.tiny import TINY_BERT_NO_DROPOUT

TINY = TINY_BERT_NO_DROPOUT  # tests/tiny.py


def tiny_model() -> MultitaskBert:
    torch.manual_seed(0)
    return MultitaskBert(BertModel(TINY), ModelConfig(head_dropout=0.0))


def sst_rows(n: int, seed: int = 3) -> TokenizedTask:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (n,), generator=g).tolist()
    rows = [(([1, *torch.randint(5, 99, (k,), generator=g).tolist(), 2], [0] * (k + 2)),)
            for k in lengths]
    return TokenizedTask("sst", rows, [0.0] * n)


def test_predict_hook_gets_each_batch_and_the_counts_sum_to_the_rows() -> None:
    model, data = tiny_model(), sst_rows(23)
    calls: list[int] = []
    hooked = predict(model, data, batch_size=5, on_batch=calls.append)
    assert sum(calls) == 23 and len(calls) == math.ceil(23 / 5) and max(calls) <= 5
    plain = predict(model, data, batch_size=5)  # the hook changes nothing in the results
    np.testing.assert_array_equal(hooked.labels, plain.labels)
    np.testing.assert_allclose(hooked.scores, plain.scores)


class WordTokenizer:
    """A stand-in HF tokenizer (call signature of `tokenize_frame`): one id per word."""

    def __call__(self, first, second=None, truncation=True, max_length=16, **_: object) -> dict:
        def ids(text: str) -> list[int]:
            return [5 + sum(map(ord, w)) % 90 for w in text.split()]

        pairs = zip(first, second) if second is not None else ((f, None) for f in first)
        out = {"input_ids": [], "token_type_ids": []}
        for a, b in pairs:
            seq = [1, *ids(a), 2] + ([*ids(b), 2] if b is not None else [])
            types = [0] * (len(ids(a)) + 2) + ([1] * (len(ids(b)) + 1) if b is not None else [])
            out["input_ids"].append(seq[:max_length])
            out["token_type_ids"].append(types[:max_length])
        return out


def test_predict_rows_hook_counts_sum_to_the_request_rows() -> None:
    rows = pd.DataFrame({"task": ["sst", "sts", "sst", "para", "sts", "sst", "sst"],
                         "sentence1": [f"sentence number {i} here" for i in range(7)],
                         "sentence2": [None, "a b", None, "c d e", "f", None, None]})
    calls: list[int] = []
    out = predict_rows(tiny_model(), WordTokenizer(), "cross", 16, rows, batch_size=2,
                       on_batch=calls.append)
    assert sum(calls) == len(rows) and max(calls) <= 2
    assert out["prediction"].notna().all()


# ---------------------------------------------------------------------------------------------
# Tuning: the trials bar and the history


def test_trial_bar_counts_trials_and_shows_the_best_value(capsys: pytest.CaptureFixture) -> None:
    from mtbert.pipeline.tuning import TrialProgress

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=5))
    bar = TrialProgress(3, enabled=True)
    study.optimize(lambda t: -(t.suggest_float("x", -1, 1) ** 2), n_trials=3, callbacks=[bar])
    bar.close()
    err = capsys.readouterr().err
    assert "tune: 100%" in err and "3/3" in err and ("trial/s" in err or "s/trial" in err)
    assert f"best={study.best_value:.4f}" in err

    quiet = TrialProgress(2, enabled=False)
    study.optimize(lambda t: t.suggest_float("x", -1, 1), n_trials=2, callbacks=[quiet])
    quiet.close()
    assert capsys.readouterr().err == ""


def test_history_has_one_row_per_trial_and_a_running_best() -> None:
    from mtbert.pipeline.tuning import history_frame

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    values = iter([None, 0.3, 0.2, None, 0.5])  # None: the trial is pruned

    def objective(trial: optuna.Trial) -> float:
        value = next(values)
        if value is None:
            raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=5)
    frame = history_frame(study)
    assert frame["trial"].tolist() == [0, 1, 2, 3, 4]
    assert frame["state"].tolist() == ["pruned", "complete", "complete", "pruned", "complete"]
    assert frame["value"].isna().tolist() == [True, False, False, True, False]
    assert frame["best"].tolist()[1:] == [0.3, 0.3, 0.3, 0.5] and math.isnan(frame["best"][0])
