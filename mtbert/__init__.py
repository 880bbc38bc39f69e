"""mtbert: one BERT encoder, three task heads (SST-5, Quora paraphrase, STS-B).

    import mtbert
    model = mtbert.load("artifacts/model")            # a trained model folder, or an MLflow URI
    model.predict("sst", ["a great film"]).names      # see mtbert.inference.TrainedModel

`import mtbert` stays cheap (no torch, no MLflow): `load` imports what it needs when called.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


# The return type is named as a string: importing mtbert.inference here, even for type checkers
# only, would put it in every stage's import closure (tests/unit/test_dvc_deps.py).
def load(source: str | Path, device: str = "cpu",
         quantize: str = "none") -> "mtbert.inference.TrainedModel":  # noqa: F821
    """Load a trained model for `predict` and `encode`.

    Args:
        source: a model folder the train stage wrote (`artifacts/model`), or an MLflow model URI
            (`models:/mtbert@champion`, `models:/mtbert/3`, `runs:/<run id>/model`) read from the
            server named by MLFLOW_TRACKING_URI.
        device: "cpu", "cuda", "cuda:1", ...
        quantize: "int8" for dynamic int8 linear layers on the CPU (about 3x faster prediction,
            slightly less accurate: docs/performance.md), "none" for the weights as trained.

    Returns:
        A `mtbert.inference.TrainedModel`.

    Raises:
        mtbert.errors.UserError: the folder or the model cannot be found or read (one line).
    """
    if str(source).startswith(("models:/", "runs:/")):
        from mtbert.pipeline.loading import load as load_uri  # MLflow only for an MLflow URI

        return load_uri(source, device, quantize)
    from mtbert.inference import load_dir  # torch only once a model is asked for

    return load_dir(source, device, quantize)


__all__ = ["__version__", "load"]
