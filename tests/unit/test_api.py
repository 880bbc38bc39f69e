"""The Python API (`mtbert.inference.TrainedModel`) on a tiny random model: its answers are those of
the code `mtbert predict` and evaluation run, its vectors those the heads see, and bad calls get one
clear ValueError. (Against a really trained model and the CLI: tests/integration/test_api_readme.py.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

import mtbert
from mtbert.batching import pad, tokenize_frame
from mtbert.config import Config, ModelConfig
from mtbert.errors import MissingFileError
from mtbert.evaluate import predict
from mtbert.inference import LABEL_NAMES, TrainedModel
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.load_hf import load_tokenizer
from mtbert.model.multitask import MultitaskBert

FIRST = ["A gripping, funny and moving film.", "Dull.", "How do I learn Python?", "ok", "Two dogs run."]
SECOND = ["A moving film.", "Boring and long.", "What is the fastest way to learn Python?", "fine",
          "A cat sleeps."]


@pytest.fixture(scope="module", params=["cross", "bi"])
def model(request) -> TrainedModel:
    tokenizer = load_tokenizer("minilm")
    torch.manual_seed(5)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=36, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=37, max_position_embeddings=40))
    cfg = Config(model=dataclasses.replace(ModelConfig(), pooling="mean", max_length=24,
                                           pair_encoding=request.param))
    return TrainedModel(MultitaskBert(bert, cfg.model), tokenizer, cfg)


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_predict_equals_the_prediction_code_of_the_cli(model: TrainedModel, task: str) -> None:
    pairs = task != "sst"
    got = model.predict(task, FIRST, SECOND if pairs else None, batch_size=2)
    frame = pd.DataFrame({"sentence1": FIRST, **({"sentence2": SECOND} if pairs else {})})
    data = tokenize_frame(model.tokenizer, frame, task, model.cfg.model.pair_encoding, 24)
    want = predict(model.model, data, 64)
    np.testing.assert_allclose(got.labels, want.labels, atol=1e-5)  # batches of 2 vs 64: sts floats
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    assert len(got) == len(FIRST)
    if task == "sts":
        assert got.names is None and ((got.labels >= 0) & (got.labels <= 5)).all()
    else:
        assert got.names == [LABEL_NAMES[task][i] for i in got.labels]
        assert list(got.to_frame().columns) == ["label", "score", "name"]


def test_encode_gives_the_vectors_the_heads_see(model: TrainedModel) -> None:
    vectors = model.encode(FIRST, batch_size=2)
    assert vectors.shape == (len(FIRST), 36) and vectors.dtype == np.float32
    for i, text in enumerate(FIRST):  # one at a time: no padding at all
        enc = model.tokenizer([text], truncation=True, max_length=24, return_token_type_ids=True)
        with torch.inference_mode():
            one = model.model.embed(pad([(enc["input_ids"][0], enc["token_type_ids"][0])]))
        np.testing.assert_allclose(vectors[i], one[0].numpy(), atol=1e-5)
    unit = model.encode(FIRST, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: m.predict("sentiment", FIRST), "unknown task 'sentiment'; valid tasks: sst, para, sts"),
    (lambda m: m.predict("para", FIRST, SECOND[:2]),
     "sentences1 has 5 sentences and sentences2 2; pairs need the same number"),
    (lambda m: m.predict("sts", FIRST), "sts compares two sentences: pass sentences1 and sentences2"),
    (lambda m: m.predict("sst", FIRST, SECOND), "sst takes single sentences; leave out sentences2"),
    (lambda m: m.predict("sst", "a great film"), "sentences1 must be a list of strings, got str"),
    (lambda m: m.predict("sst", ["fine", None]), r"sentences1\[1\] is NoneType, not a string"),
    (lambda m: m.encode("one sentence"), "sentences must be a list of strings, got str"),
])
def test_bad_calls_get_one_clear_value_error(model: TrainedModel, call, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        call(model)


def test_a_task_without_a_head_is_named(model: TrainedModel) -> None:
    sst_only = TrainedModel(MultitaskBert(model.model.encoder, model.cfg.model, ("sst",)),
                            model.tokenizer, model.cfg)
    with pytest.raises(ValueError, match="^this model has no sts head; it was trained for sst$"):
        sst_only.predict("sts", FIRST, SECOND)


def test_empty_input_gives_empty_predictions(model: TrainedModel) -> None:
    assert len(model.predict("para", [], [])) == 0
    assert model.encode([]).shape == (0, 36)


def test_load_names_a_missing_folder(tmp_path) -> None:
    with pytest.raises(MissingFileError):
        mtbert.load(tmp_path / "nothing-here")
