"""`mtbert.load` for MLflow model URIs (edge module: imports MLflow).

`models:/mtbert@champion`, `models:/mtbert/3`, `runs:/<run id>/model`, `models:/m-...`: the logged
pyfunc model (`mtbert.pipeline.pyfunc`) is downloaded from the tracking server named by
MLFLOW_TRACKING_URI (default: the project's local store, as every stage uses) and the trained model
folder it carries as its artifact is loaded like a local one. Nothing of the logged model's code
is imported: the installed mtbert reads the folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from mtbert.errors import MissingFileError, UserError
from mtbert.inference import TrainedModel, load_dir
from mtbert.pipeline import tracking
from mtbert.pipeline.pyfunc import MODEL_DIR_KEY

URI_SCHEMES = ("models:/", "runs:/")


def is_mlflow_uri(source: str | Path) -> bool:
    return str(source).startswith(URI_SCHEMES)


def download_model_dir(uri: str, dst: str | Path) -> Path:
    """Download the logged model `uri` into `dst`; returns the trained model folder inside it.

    Raises:
        UserError: the server cannot be reached, or names no such model, version or alias; or the
            logged model is not an mtbert pyfunc model.
    """
    tracking_uri = tracking.tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load {uri} from the MLflow server {tracking_uri} ({first})",
                        fix="check the name and alias (`mtbert compare`) and MLFLOW_TRACKING_URI") from None
    try:
        flavor = Model.load(str(local / "MLmodel")).flavors["python_function"]
        folder = local / flavor["artifacts"][MODEL_DIR_KEY]["path"]
    except (OSError, KeyError, MlflowException):
        raise UserError(f"{uri} is not an mtbert model (no {MODEL_DIR_KEY!r} artifact in its "
                        "python_function flavor)") from None
    if not folder.is_dir():
        raise MissingFileError("the logged model lacks its model folder", path=folder)
    return folder


def load(source: str | Path, device: str = "cpu", quantize: str = "none") -> TrainedModel:
    """A trained model from a local folder or an MLflow model URI (see the module docstring)."""
    if not is_mlflow_uri(source):
        return load_dir(source, device, quantize)
    # The weights are read into memory; the download is not needed afterwards.
    with tempfile.TemporaryDirectory(prefix="mtbert-load-") as tmp:
        return load_dir(download_model_dir(str(source), tmp), device, quantize)
