"""The pretrain-mlm stage: MLM further pretraining of the encoder on the task sentences.

`pretrain` is the work (ablation configurations with `mlm.enabled` call it); `run` is the stage,
tracked in the MLflow run "pretrain-mlm".
"""

from __future__ import annotations

from collections.abc import Sequence

from mtbert import pretrain as mlm
from mtbert.config import Config, to_dict
from mtbert.model.load_hf import load_pretrained_bert, load_tokenizer
from mtbert.pipeline import tracking
from mtbert.pipeline.project import (
    apply_threads,
    dev_frame,
    resolve_device,
    seed_everything,
    train_frames,
    unsent_path,
)
from mtbert.tasks import TASKS
from mtbert.callbacks import Callback

MLM_EVAL_SENTENCES = 256  # dev sentences whose MLM loss (fixed mask) is reported before and after


def pretrain(cfg: Config, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Further-pretrain `model.checkpoint` with MLM on the training sentences; write `mlm.out_dir`.

    The sentences are those of the training tables `train_frames` gives (profile trimming applies),
    deduplicated and capped at `mlm.max_sentences`. The output is an HF encoder directory: train on
    it with `train.init_from=<mlm.out_dir>`. Returns the MLM losses (a held-out loss on dev
    sentences with a fixed mask, before and after) and sizes.
    """
    seed_everything(cfg.seed)
    apply_threads(cfg)
    device = resolve_device(cfg.train.device)
    tokenizer = load_tokenizer(cfg.model.checkpoint)
    tokens = mlm.mlm_tokens(tokenizer)
    sentences = mlm.collect_sentences(train_frames(cfg), cfg.mlm.max_sentences, cfg.seed)
    train_seqs = mlm.tokenize_sentences(tokenizer, sentences, cfg.model.max_length)
    dev = mlm.collect_sentences({t: dev_frame(cfg, t) for t in TASKS}, MLM_EVAL_SENTENCES, cfg.seed)
    dev_seqs = mlm.tokenize_sentences(tokenizer, dev, cfg.model.max_length)
    encoder = load_pretrained_bert(cfg.model.checkpoint, attn_impl=cfg.model.attn_impl,
                                   max_length=cfg.model.max_length)
    head, loaded = mlm.load_mlm_head(cfg.model.checkpoint, encoder)
    encoder.to(device)
    head.to(device)
    before = mlm.evaluate_mlm(encoder, head, dev_seqs, tokens, cfg.mlm.mask_prob, cfg.seed)
    state = mlm.further_pretrain(encoder, head, train_seqs, tokens, cfg.mlm, seed=cfg.seed,
                                 weight_decay=cfg.train.weight_decay,
                                 grad_clip=cfg.train.grad_clip, callbacks=callbacks)
    after = mlm.evaluate_mlm(encoder, head, dev_seqs, tokens, cfg.mlm.mask_prob, cfg.seed)
    stats = {"mlm/dev_loss_before": before, "mlm/dev_loss_after": after,
             "mlm/steps": float(state.global_step), "mlm/sentences": float(len(sentences)),
             "mlm/head_loaded": float(loaded)}
    mlm.save_encoder(cfg.mlm.out_dir, encoder.cpu(), head.cpu(), tokenizer,
                     {"config": to_dict(cfg), "stats": stats})
    return stats


def run(cfg: Config, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """The stage: `pretrain` inside the MLflow run "pretrain-mlm"; its statistics are logged."""
    with tracking.tracked_run(cfg, "pretrain-mlm", fallback=unsent_path(cfg)) as tracked:
        stats = pretrain(cfg, callbacks=[*callbacks, tracked.callback])
        tracked.log_metrics(stats)
    return stats
