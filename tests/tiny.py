"""The tiny BERT shapes the unit tests share: odd, distinct sizes so that a transposed dimension
fails loudly (vocabulary 99, hidden 32, 2 layers, 4 heads, FFN 37, 16 positions), as HF's
ModelTester does."""

from __future__ import annotations

import dataclasses

from mtbert.model.bert import BertConfig

TINY_BERT = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=16)
# Without dropout: for tests that compare two computations of the same numbers.
TINY_BERT_NO_DROPOUT = dataclasses.replace(TINY_BERT, hidden_dropout_prob=0.0,
                                           attention_probs_dropout_prob=0.0)
