"""The trained model as an MLflow pyfunc model (edge module: imports MLflow).

The logged model carries the trained model directory (weights, `mtbert.json`, tokenizer files)
as its artifact and this package's code, so `mlflow models serve` or `mlflow.pyfunc.load_model`
need no checkout of the repository. Requests are tables of (task, sentence1, sentence2) rows;
answers are (task, prediction, score) rows from `mtbert.pipeline.serving.predict_rows`. A request the
model cannot answer raises `MlflowException(INVALID_PARAMETER_VALUE)`, which MLflow's scoring
server turns into HTTP 400 with the reason in the body and no stack trace.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mtbert.model.trained import load_trained
from mtbert.pipeline.serving import PredictionInputError, predict_rows

MODEL_DIR_KEY = "model_dir"
# `mtbert serve` passes `eval.quantize` to the scoring server through this variable ("int8": the
# served model predicts with dynamic int8 linear layers; unset or "none": as trained).
QUANTIZE_ENV = "MTBERT_QUANTIZE"
# The package's source folder, shipped with the logged model. Not `mtbert.__file__`: the package's
# `__init__` (`mtbert.load`) is the library's front door, above this layer.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
MODEL_NAME = "model"  # the logged model's name inside its run
BATCH_SIZE = 64

# What `mtbert.model.trained.load_trained` and `predict_rows` import at run time. Pinned to the versions
# installed now; torch without its local label (+cpu): install the CPU wheel index for a CPU build.
RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub",
                    "numpy", "pandas", "scipy", "pyyaml", "matplotlib")

# Models from code (not a pickled object): the logged model rebuilds MtbertPyfunc from this script.
MODEL_CODE = """from mlflow.models import set_model

from mtbert.pipeline.pyfunc import MtbertPyfunc

set_model(MtbertPyfunc())
"""

INPUT_EXAMPLE = pd.DataFrame({
    "task": ["sst", "para", "sts"],
    "sentence1": ["A gripping, funny and moving film.", "How do I learn Python quickly?",
                  "A man is playing a guitar."],
    "sentence2": [None, "What is the fastest way to learn Python?", "A man plays the guitar."],
})


class MtbertPyfunc(mlflow.pyfunc.PythonModel):
    """Multitask BERT behind MLflow's pyfunc interface; holds no weights until `load_context`."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model, self.tokenizer, self.cfg = load_trained(
            context.artifacts[MODEL_DIR_KEY], quantize=os.environ.get(QUANTIZE_ENV, "none"))

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Predict rows (task, sentence1[, sentence2]) -> DataFrame (task, prediction, score).

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE (HTTP 400) for a request the model cannot
                answer; the message names the row and the reason.
        """
        try:
            return predict_rows(self.model, self.tokenizer, self.cfg.model.pair_encoding,
                                self.cfg.model.max_length, pd.DataFrame(model_input),
                                batch_size=BATCH_SIZE)
        except PredictionInputError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from err


def pip_requirements() -> list[str]:
    """Pinned runtime requirements of the logged model (MLflow adds its own pin)."""
    reqs = []
    for name in RUNTIME_PACKAGES:
        version = importlib.metadata.version(name).split("+")[0]
        reqs.append(f"{name}=={version}")
    return reqs


def example_signature(model_dir: str | Path) -> mlflow.models.ModelSignature:
    """The signature inferred from INPUT_EXAMPLE and the model's real output for it."""
    model = MtbertPyfunc()
    context = mlflow.pyfunc.PythonModelContext(artifacts={MODEL_DIR_KEY: str(model_dir)},
                                               model_config={})
    model.load_context(context)
    return infer_signature(INPUT_EXAMPLE, model.predict(context, INPUT_EXAMPLE))


def log_model(model_dir: str | Path, name: str = MODEL_NAME) -> str:
    """Log the trained model in `model_dir` as a pyfunc model to the active run.

    Returns:
        The logged model's URI (`models:/m-...`), ready for `mlflow.register_model`.
    """
    with tempfile.TemporaryDirectory(prefix="mtbert-pyfunc-") as tmp:
        code = Path(tmp) / "mtbert_model.py"
        code.write_text(MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code),
            artifacts={MODEL_DIR_KEY: str(model_dir)},
            code_paths=[str(PACKAGE_DIR)],
            signature=example_signature(model_dir),
            input_example=INPUT_EXAMPLE,
            pip_requirements=pip_requirements(),
        )
    return info.model_uri
