"""dvc.yaml names every pipeline module a stage runs: otherwise editing one would not rerun the stage."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import REPO_ROOT

STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """pipeline/<name>.py files this one imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
    return {f"pipeline/{name}.py" for name in found}


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imported_modules(REPO_ROOT / module)
    return seen


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_imports_is_a_dep(stage):
    module = re.fullmatch(r"python -m pipeline\.(\w+)\b.*", STAGES[stage]["cmd"]).group(1)
    deps = {d if isinstance(d, str) else next(iter(d)) for d in STAGES[stage]["deps"]}
    missing = closure(f"pipeline/{module}.py") - deps
    assert not missing, f"dvc.yaml stage {stage} runs {sorted(missing)} but does not list them as deps"


def test_codec_params_rerun_evaluate_and_never_train():
    """codec.refine_steps changes how evaluate encodes the test images, not the trained weights."""
    assert "codec" in STAGES["evaluate"]["params"]
    assert not any(str(key).startswith("codec") for key in STAGES["train"]["params"])
