"""Loading a trained model directory (`model.safetensors`, `mtbert.json`, tokenizer files).

The directory is what the train stage writes (`mtbert.checkpoint.save_model`); everything needed to
rebuild the model is in it, so prediction, serving and the pyfunc model need no params.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtbert.checkpoint import META_FILE, MODEL_FILE, CheckpointError, read_model_files
from mtbert.config import Config, config_from_resolved
from mtbert.errors import UserError, one_line
from mtbert.model.bert import BertConfig
from mtbert.model.load_hf import load_tokenizer
from mtbert.model.multitask import MultitaskBert, multitask_from_state


def load_trained(model_dir: str | Path, device: str = "cpu") -> tuple[MultitaskBert, Any, Config]:
    """The trained model (in eval mode, on `device`), its tokenizer and the config it was trained with."""
    state, meta = read_model_files(model_dir)
    meta_path = Path(model_dir) / META_FILE
    try:
        cfg = config_from_resolved(meta["config"])
        model = multitask_from_state(BertConfig(**meta["bert_config"]), cfg.model, state, cfg.train.tasks)
    except UserError as err:
        raise err.locate(meta_path) from None
    except (KeyError, TypeError, RuntimeError) as err:  # written by another version, or edited
        reason = one_line(f"does not match the weights ({type(err).__name__}: {str(err)[:300]})")
        raise CheckpointError(reason, path=Path(model_dir) / MODEL_FILE,
                              fix="retrain the model with this version of mtbert") from None
    return model.to(device).eval(), load_tokenizer(str(model_dir)), cfg
