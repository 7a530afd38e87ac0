"""Each stage reads exactly the params keys dvc.yaml declares for it: recorded while the stages run on tiny data.

A key read but not declared means `dvc repro` would skip a stage whose result that key changes; a declared
section never read reruns the stage for nothing.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import yaml

from pipeline import cli
from pipeline.lib import config
from tests.conftest import REPO, TINY_SPEC
from tests.fakedata import fake_study_weights, make_emnist_dir

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
CONFIG_CLASSES = [cls for cls in vars(config).values() if dataclasses.is_dataclass(cls) and cls is not config.Compute]
RUN = ("model01", 0)  # a tiny architecture under a study model's name, so that the study stage runs on it too
ORDER = ["prepare", "classifier", "baselines", "train", "evaluate", "study", "report"]


class Recorder:
    """Records the dotted params key of every leaf value read from a loaded Params tree."""

    def __init__(self):
        self.keys: dict[int, str] = {}
        self.reads: set[str] = set()
        self.alive: list[object] = []

    def register(self, params: config.Params) -> config.Params:
        # Objects stay referenced so that no id recorded here can be reused by a later, unrelated object.
        self.keys, self.alive = {id(params): ""}, [params]
        for field in dataclasses.fields(params):
            value = getattr(params, field.name)
            if dataclasses.is_dataclass(value):
                self.keys[id(value)] = field.name
                self.alive.append(value)
            elif isinstance(value, dict):
                self.keys.update({id(spec): f"{field.name}.{name}" for name, spec in value.items()})
                self.alive.extend(value.values())
        self.reads.clear()
        return params

    def getattribute(self, obj, name):
        value = object.__getattribute__(obj, name)
        key = self.keys.get(id(obj))
        names = {f.name for f in dataclasses.fields(type(obj))}
        container = isinstance(value, dict) and any(dataclasses.is_dataclass(v) for v in value.values())
        if key is not None and name in names and not dataclasses.is_dataclass(value) and not container:
            self.reads.add(f"{key}.{name}" if key else name)
        return value


@pytest.fixture(scope="module")
def reads(tmp_path_factory) -> dict[str, set[str]]:
    """Every stage run once, in order, in a tiny project; the params keys each one read."""
    root = tmp_path_factory.mktemp("project")
    data_dir = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["source"] = str(data_dir)
    raw["train"].update(epochs=1, steps_per_epoch=2, batch_size=32, threads=1)
    raw.update(seeds=[RUN[1]], variants={RUN[0]: TINY_SPEC}, matrix=[RUN[0]])
    raw["mlflow"]["log_model"] = False
    raw["rate_distortion"].update(jpeg_qualities=[50], webp_qualities=[50], pca_dims=[8])
    raw["classifier"]["epochs"] = 1
    raw["study"].update(models=[RUN[0]], **fake_study_weights(tmp_path_factory.mktemp("study"), RUN[0]))
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    recorder, found = Recorder(), {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPRESSNET_ROOT", str(root))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        load = cli.load_params
        patch.setattr(cli, "load_params", lambda path: recorder.register(load(path)))
        for cls in CONFIG_CLASSES:
            patch.setattr(cls, "__getattribute__", lambda obj, name: recorder.getattribute(obj, name))
        for stage in ORDER:
            argv = [RUN[0], "--seed", str(RUN[1])] if "matrix" in STAGES[stage] else []
            argv = [RUN[0]] if stage == "study" else argv
            module = importlib.import_module(f"pipeline.stages.{stage}")
            assert module.main(argv) == 0, stage
            found[stage] = set(recorder.reads)
    return found


def declared(stage: str) -> set[str]:
    keys = (str(key).replace("${item.variant}", RUN[0]) for key in STAGES[stage].get("params", []))
    return {key.replace("${item.model}", RUN[0]) for key in keys}


@pytest.mark.parametrize("stage", ORDER)
def test_a_stage_reads_only_declared_params(stage, reads):
    keys = declared(stage)
    undeclared = {r for r in reads[stage] if not any(r == k or r.startswith(f"{k}.") for k in keys)}
    assert not undeclared, f"dvc.yaml stage {stage} reads {sorted(undeclared)} without declaring them"


@pytest.mark.parametrize("stage", ORDER)
def test_a_stage_reads_every_declared_param(stage, reads):
    unread = {k for k in declared(stage) if not any(r == k or r.startswith(f"{k}.") for r in reads[stage])}
    assert not unread, f"dvc.yaml stage {stage} declares {sorted(unread)} but never reads them"
