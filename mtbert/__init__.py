"""mtbert: one BERT encoder, three task heads (SST-5, Quora paraphrase, STS-B)."""

__version__ = "0.1.0"
