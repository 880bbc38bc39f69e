"""dvc.yaml's code deps are the code each stage's command runs: the import closure of the CLI
(module level) plus what the command's function imports, read from the source. A stage that lists
less would let `dvc repro` reuse stale outputs after a code change; one that lists more re-runs
for nothing. On failure the message gives the list; `python -m tests.unit.test_dvc_deps` rewrites
dvc.yaml with it."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.imports import closure, imports, project_files

CLI = "mtbert.cli"
# Followed at module level only: the CLI imports each command's stage in the command, and the
# package's `__init__` imports what `mtbert.load` needs only when a user calls it (no stage does).
MODULE_LEVEL_ONLY = frozenset({CLI, "mtbert"})


def command_imports(command: str) -> list[str]:
    """The project modules `cmd_<command>` in cli.py imports when it runs."""
    tree = ast.parse((REPO_ROOT / "mtbert" / "cli.py").read_text())
    name = "cmd_" + command.replace("-", "_")
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    found = []
    for node in ast.walk(func):
        if isinstance(node, ast.ImportFrom):
            found += [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in project_files()
                      else node.module for a in node.names]
    return found


def stage_command(cmd: str) -> str:
    words = [w for w in shlex.split(cmd) if not w.startswith("-")]
    assert words[0] == "mtbert", f"stage command {cmd!r} does not run the mtbert CLI"
    return words[1]


def expected_code_deps(cmd: str) -> list[str]:
    roots = [CLI, *command_imports(stage_command(cmd))]
    files = project_files()
    modules = closure(roots, imports(files), module_level_only=MODULE_LEVEL_ONLY)
    return sorted(str(files[m].relative_to(REPO_ROOT)) for m in modules)


def listed_code_deps(deps: list[str]) -> list[str]:
    out = []
    for dep in deps:
        path = REPO_ROOT / dep
        if dep.startswith(("mtbert", "flows")):
            files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            out += [str(f.relative_to(REPO_ROOT)) for f in files]
    return sorted(out)


STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_the_code_its_command_runs(stage: str) -> None:
    body = STAGES[stage]
    expected, listed = expected_code_deps(body["cmd"]), listed_code_deps(body["deps"])
    paste = "\n".join(f"      - {path}" for path in expected)
    assert listed == expected, (f"dvc.yaml stage {stage!r}: code deps differ from what "
                                f"`{body['cmd']}` imports. The deps to list:\n{paste}")


def test_the_train_stage_runs_the_training_code_and_not_the_registry() -> None:
    deps = expected_code_deps("mtbert train")
    assert {"mtbert/pipeline/stages/train.py", "mtbert/train.py", "mtbert/losses.py",
            "mtbert/pipeline/tracking.py", "mtbert/cli.py", "mtbert/config.py"} <= set(deps)
    assert "mtbert/pipeline/registry.py" not in deps and "mtbert/pipeline/tuning.py" not in deps
    assert not any(Path(d).name == "evaluate.py" and "stages" in d for d in deps)


def rewrite_dvc_yaml(path: Path = REPO_ROOT / "dvc.yaml") -> None:
    """Replace each stage's code deps in dvc.yaml by the derived list (data deps are kept)."""
    import re

    text = path.read_text()
    for stage, body in STAGES.items():
        block = re.search(rf"\n  {stage}:\n    cmd: [^\n]*\n    deps:\n((?:      - [^\n]*\n)+)", text)
        assert block, f"stage {stage!r}: expected `cmd:` then `deps:` as a list"
        kept = [line for line in block.group(1).splitlines()
                if not line.strip()[2:].startswith(("mtbert", "flows"))]
        new = kept + [f"      - {p}" for p in expected_code_deps(body["cmd"])]
        text = text[:block.start(1)] + "\n".join(new) + "\n" + text[block.end(1):]
    path.write_text(text)


if __name__ == "__main__":  # python -m tests.unit.test_dvc_deps: rewrite dvc.yaml's code deps
    rewrite_dvc_yaml()
