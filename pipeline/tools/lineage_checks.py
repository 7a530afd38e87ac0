"""The lineage command's checks: each link of a run's chain compared with what was recorded when it was made."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from pipeline import provenance
from pipeline.lib.config import TrainConfig, VariantSpec, run_name

if TYPE_CHECKING:
    from pipeline.tools.lineage import Chain, Project

UNKNOWN = provenance.UNKNOWN
RUN_NAME = re.compile(r"(?P<variant>.+)-seed(?P<seed>[0-9]+)")  # pipeline.lib.config.run_name's names, read back


def check(c: Chain, p: Project) -> list[str]:
    """One line per broken link."""
    if c.saved is None:
        return [f"model missing: {p.relative(c.model_path)} does not exist ({_how_to_train(c, p)})"]
    return [
        *_data_changed(c, p),
        *_params_edited(c, p),
        *_model_replaced(c, p),
        *_run_missing(c, p),
        *_metrics_stale(c, p),
    ]


def _how_to_train(c: Chain, p: Project) -> str:
    """The command that trains the run: its stage, or for a run outside params.yaml's matrix and seeds (no such
    stage) the experiment that adds it."""
    if (c.variant, c.seed) in p.params.runs():
        return f"dvc repro {c.stage('train')}"
    return f"outside params.yaml's matrix and seeds: dvc exp run -S 'matrix=[{c.variant}]' -S 'seeds=[{c.seed}]'"


def _differ(then: object, now: object) -> bool:
    """Both known, and different."""
    return then not in (None, UNKNOWN) and now not in (None, UNKNOWN) and then != now


def _short(digest: object) -> str:
    return digest[:12] if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{32,64}(\.dir)?", digest) else str(digest)


def _data_changed(c: Chain, p: Project) -> list[str]:
    made_from = {p.relative(c.model_path): c.saved.get("data_manifest_sha256")}
    if c.metrics:
        made_from[c.metrics_path] = c.metrics.get("data_manifest_sha256")
    problems = [
        f"data changed: {where} was made from prepared data with manifest sha256 {_short(then)}, "
        f"data/prepared/manifest.json is now {_short(c.manifest_sha256)}"
        for where, then in made_from.items()
        if then != c.manifest_sha256
    ]
    then, now = c.saved.get("dvc", {}).get("prepared_md5"), provenance.out_md5(p.lock, "data/prepared")
    if _differ(then, now):
        problems.append(
            f"data changed: {p.relative(c.model_path)} was trained on data/prepared with dvc md5 "
            f"{_short(then)}, dvc.lock now records {_short(now)}"
        )
    return problems


def _params_edited(c: Chain, p: Project) -> list[str]:
    if c.variant not in p.params.variants:
        return [f"params edited: variants.{c.variant} is no longer in params.yaml"]
    problems = [] if c.seed in p.params.seeds else [f"params edited: seeds no longer lists {c.seed}"]
    spec, train = _with_defaults(VariantSpec, c.saved["spec"]), _with_defaults(TrainConfig, c.saved["train"])
    changes = diff(spec, dataclasses.asdict(p.params.variant(c.variant)), f"variants.{c.variant}") + diff(
        train, dataclasses.asdict(p.params.train_for(c.variant)), "train"
    )
    problems += [
        f"params edited: {key}: {p.relative(c.model_path)} was trained with {old!r}, params.yaml has {new!r}"
        for key, old, new in changes
    ]
    for stage in ("prepare", c.stage("train"), c.stage("evaluate")):
        problems += [
            f"params edited: {key}: dvc.lock's {stage} ran with {old!r}, params.yaml has {new!r}"
            for key, old, new in params_drift(p.lock, stage, p.params_raw)
        ]
    return problems


def params_drift(lock: dict[str, dict], stage: str, current: dict) -> list[tuple[str, object, object]]:
    """(key, value in dvc.lock, value in params.yaml) for each param the stage was run with that has changed."""
    locked = lock.get(stage, {}).get("params", {}).get("params.yaml", {})
    return [change for key, value in locked.items() for change in diff(value, _lookup(current, key), key)]


def _lookup(tree: dict, dotted: str) -> object:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def diff(old: object, new: object, key: str) -> list[tuple[str, object, object]]:
    """Leaves that differ between two nested dicts, as (dotted key, old, new); new is None where missing."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for k in {**old, **new} for change in diff(old.get(k), new.get(k), f"{key}.{k}")]
    return [] if old == new else [(key, old, new)]


def _with_defaults(cls, saved: dict) -> dict:
    """A model saved before a key existed (norm, loss, ...) was trained with that key's default."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    return {**defaults, **saved}


def _model_replaced(c: Chain, p: Project) -> list[str]:
    where, problems = p.relative(c.model_path), []
    if (c.saved["variant"], c.saved["seed"]) != (c.variant, c.seed):
        problems.append(f"model file replaced: {where} holds {run_name(c.saved['variant'], c.saved['seed'])}")
    then = c.run.data.tags.get("model_sha256") if c.run else None
    if _differ(then, c.model_sha256):
        problems.append(
            f"model file replaced: {where} has sha256 {_short(c.model_sha256)}, its MLflow run "
            f"recorded {_short(then)} when training wrote it"
        )
    locked = provenance.out_md5(p.lock, where)
    if _differ(locked, c.model_md5):
        problems.append(
            f"model file replaced: {where} has md5 {_short(c.model_md5)}, dvc.lock's {c.stage('train')} "
            f"recorded {_short(locked)}"
        )
    return problems


def _run_missing(c: Chain, p: Project) -> list[str]:
    if c.run is not None:
        return []
    return [
        f"run missing: MLflow run {c.saved.get('mlflow_run_id')} of {p.relative(c.model_path)} is not in "
        f"the tracking store {p.uri}"
    ]


def _metrics_stale(c: Chain, p: Project) -> list[str]:
    if c.metrics is None:
        return [f"metrics stale: {c.metrics_path} is missing (dvc repro {c.stage('evaluate')})"]
    recorded, where, problems = c.metrics.get("run", {}), p.relative(c.model_path), []
    if _differ(recorded.get("model_sha256"), c.model_sha256):
        problems.append(
            f"metrics stale: {c.metrics_path} was computed from a model with sha256 "
            f"{_short(recorded['model_sha256'])}, {where} now has {_short(c.model_sha256)}"
        )
    if _differ(recorded.get("mlflow_run_id"), c.saved.get("mlflow_run_id")):
        problems.append(
            f"metrics stale: {c.metrics_path} belongs to MLflow run {recorded['mlflow_run_id']}, "
            f"{where} to run {c.saved.get('mlflow_run_id')}"
        )
    then, now = recorded.get("dvc", {}).get("train_lock_sha256"), provenance.entry_digest(p.lock, c.stage("train"))
    if _differ(then, now):
        problems.append(
            f"metrics stale: {c.metrics_path} was computed when dvc.lock's {c.stage('train')} entry "
            f"had sha256 {_short(then)}, it now has {_short(now)}"
        )
    return problems
