"""Loading a trained model directory (`model.safetensors`, `mtbert.json`, tokenizer files).

The directory is what the train stage writes (`mtbert.checkpoint.save_model`); everything needed to
rebuild the model is in it, so prediction, serving and the pyfunc model need no params.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtbert.checkpoint import read_model_files
from mtbert.config import Config, config_from_resolved
from mtbert.model.bert import BertConfig
from mtbert.model.load_hf import load_tokenizer
from mtbert.model.multitask import MultitaskBert, multitask_from_state


def load_trained(model_dir: str | Path, device: str = "cpu") -> tuple[MultitaskBert, Any, Config]:
    """The trained model (in eval mode, on `device`), its tokenizer and the config it was trained with."""
    state, meta = read_model_files(model_dir)
    cfg = config_from_resolved(meta["config"])
    model = multitask_from_state(BertConfig(**meta["bert_config"]), cfg.model, state, cfg.train.tasks)
    return model.to(device).eval(), load_tokenizer(str(model_dir)), cfg
