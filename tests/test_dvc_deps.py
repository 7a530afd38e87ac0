"""dvc.yaml lists exactly the pipeline modules each stage imports, and the layers stay apart.

A missing module means editing it would not rerun the stage; an extra one reruns it for nothing.
"""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from tests.imports import REPO, as_path, closure, imported, module_file

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
MODULES = sorted(".".join(path.relative_to(REPO).with_suffix("").parts) for path in (REPO / "pipeline").rglob("*.py"))


def stage_module(stage: str) -> str:
    return re.fullmatch(r"python -m ([\w.]+)\b.*", STAGES[stage]["cmd"]).group(1)


@pytest.mark.parametrize("stage", STAGES)
def test_deps_are_exactly_the_modules_a_stage_imports(stage):
    listed = {d if isinstance(d, str) else next(iter(d)) for d in STAGES[stage]["deps"]}
    listed = {d for d in listed if d.endswith(".py")}
    imports = {as_path(m) for m in closure(stage_module(stage))}
    assert imports - listed == set(), f"dvc.yaml stage {stage} runs these without listing them"
    assert listed - imports == set(), f"dvc.yaml stage {stage} lists these but never imports them"


def test_stages_never_import_each_other():
    stages = {m for m in MODULES if m.startswith("pipeline.stages.") and not m.endswith("__init__")}
    for stage in stages:
        others = imported(module_file(stage)) & (stages - {stage})
        assert not others, f"{stage} imports {sorted(others)}: stages talk through files"


def _top_level_imports(module: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("pipeline.lib.") and "__init__" not in m])
def test_the_library_holds_no_tracking_dvc_paths_or_stages(module):
    forbidden = ("mlflow", "dvc", "pipeline.paths", "pipeline.tracking", "pipeline.provenance", "pipeline.cli",
                 "pipeline.stages", "pipeline.tools")  # fmt: skip
    bad = {n for n in _top_level_imports(module) if n.split(".")[0] in ("mlflow", "dvc") or n.startswith(forbidden)}
    assert not bad, f"{module} imports {sorted(bad)}: the library takes paths and a tracker as arguments"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("pipeline.tools.")])
def test_tools_use_the_library_not_stages(module):
    bad = {n for n in _top_level_imports(module) if n.startswith("pipeline.stages")}
    assert not bad, f"{module} imports stage internals {sorted(bad)}"


def test_codec_params_rerun_evaluate_and_never_train():
    """codec.refine_steps changes how evaluate encodes the test images, not the trained weights."""
    assert "codec" in STAGES["evaluate"]["params"]
    assert not any(str(key).startswith("codec") for key in STAGES["train"]["params"])


def test_editing_the_codec_never_retrains():
    """docs/architecture.md promises it: train stores the uint8 grid in the model file, but not the stream format."""
    assert "pipeline.lib.codec" not in closure(stage_module("train"))
    assert "pipeline.lib.codec" in closure(stage_module("evaluate"))


def test_the_study_stages_which_download_come_before_training():
    """DVC runs independent stages in dvc.yaml's order (so does the Ray executor): offline, the study's download
    must fail before hours of training, not after."""
    assert list(STAGES).index("study") < list(STAGES).index("train")
