"""`python -m pipeline.tools.lineage TARGET`: print a run's lineage and check that every link still matches.

TARGET: a run (model01-seed0), a variant (every seed in params.yaml), a model file, or an MLflow run id.
The chain: raw data sha256s -> prepared manifest -> training (params, code commit, MLflow run) -> model
file -> metrics. Each link is compared with what was recorded when it was made (in the model file, the
metrics JSON, the MLflow run and dvc.lock). Exit status 0: every link matches; 1: one line per broken link.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from pipeline import paths, provenance, tracking
from pipeline.lib import prepared, schema
from pipeline.lib.config import ConfigError, Params, TrainConfig, VariantSpec, load_params, run_name
from pipeline.lib.io import DataError, load_torch, md5_file, sha256_file

RUN_NAME = re.compile(r"(?P<variant>.+)-seed(?P<seed>[0-9]+)")
KEY_METRICS = ("mse", "psnr", "psnr_pooled", "ssim", "dead_latent_units", "n_test")
UNKNOWN = provenance.UNKNOWN


@dataclass
class Project:
    """The checkout being checked: params.yaml, dvc.lock and its MLflow store (client None: no store)."""

    root: Path
    params: Params
    params_raw: dict
    lock: dict
    uri: str
    client: MlflowClient | None

    @classmethod
    def open(cls, root: Path) -> Project:
        uri = tracking.tracking_uri(root)
        client = None if tracking.store_missing(uri) else MlflowClient(tracking_uri=uri)
        params_file = root / "params.yaml"
        return cls(
            root,
            load_params(params_file),
            yaml.safe_load(params_file.read_text()),
            provenance.read_lock(root),
            uri,
            client,
        )

    def run(self, run_id: str | None):
        """The live MLflow run with this id, or None."""
        try:
            run = self.client.get_run(run_id) if self.client and run_id else None
        except mlflow.exceptions.MlflowException:
            return None
        return run if run and run.info.lifecycle_stage == "active" else None

    def relative(self, path: Path) -> str:
        """How dvc.lock names a file of this project (a file elsewhere: its path)."""
        relative = provenance.relative_path(path, self.root)
        return str(path) if relative == UNKNOWN else relative


@dataclass
class Chain:
    """One run's links as they are now; saved is the model file's metadata (None: no model file)."""

    name: str
    variant: str
    seed: int
    model_path: Path
    saved: dict | None
    metrics: dict | None
    run: object | None  # mlflow.entities.Run
    manifest: dict | None  # data/prepared/manifest.json
    manifest_sha256: str
    model_sha256: str | None
    model_md5: str | None

    def stage(self, kind: str) -> str:
        return provenance.stage_name(kind, self.variant, self.seed)

    @property
    def metrics_path(self) -> str:
        return f"reports/metrics/{self.name}.json"


def resolve(target: str, project: Project) -> list[tuple[str, Path]]:
    """(run name, model file) of every run TARGET names."""
    models = project.root / "models"
    path = next((p for p in (Path(target), project.root / target) if p.suffix == ".pt" and p.is_file()), None)
    if path:
        saved = load_model_meta(path)
        if "seed" not in saved:
            raise LookupError(f"{path}: a model file from before seeds (no 'seed' key); retrain it with dvc repro")
        return [(run_name(saved["variant"], saved["seed"]), path)]
    if target in project.params.variants:
        names = [run_name(target, seed) for seed in project.params.seeds]
    elif RUN_NAME.fullmatch(target):
        names = [target]
    else:
        run = project.run(target)
        tags = run.data.tags if run else {}
        if "variant" not in tags:
            raise LookupError(
                f"{target}: not a model file, a variant in params.yaml, a run name like "
                f"model01-seed0, nor a training run in {project.uri}"
            )
        names = [run_name(tags["variant"], int(tags["seed"]))]
    return [(name, models / f"{name}.pt") for name in names]


def load_model_meta(path: Path) -> dict | None:
    """A model file's metadata without its weights; None if there is no such file."""
    if not path.exists():
        return None
    return {k: v for k, v in load_torch(path, "").items() if k != "state_dict"}


def gather(project: Project, name: str, model_path: Path) -> Chain:
    match = RUN_NAME.fullmatch(name)
    data_dir = project.root / "data" / "prepared"
    metrics_file = project.root / "reports" / "metrics" / f"{name}.json"
    saved = load_model_meta(model_path)
    manifest = prepared.load_manifest(data_dir) if (data_dir / "manifest.json").exists() else None
    return Chain(
        name,
        match["variant"],
        int(match["seed"]),
        model_path,
        saved,
        schema.load(metrics_file) if metrics_file.exists() else None,
        project.run(saved.get("mlflow_run_id")) if saved else None,
        manifest,
        prepared.manifest_digest(data_dir) if manifest else "missing",
        sha256_file(model_path) if saved else None,
        md5_file(model_path) if saved else None,
    )


# ---------------------------------------------------------------- the chain, printed


def describe(c: Chain, p: Project) -> list[str]:
    manifest = c.manifest or {"source": "unknown (no data/prepared/manifest.json)", "inputs": {}}
    lines = [c.name, f"  raw data   {manifest['source']}"]
    lines += [f"             {file} sha256 {sha}" for file, sha in sorted(manifest["inputs"].items())]
    lines.append(
        f"  prepared   data/prepared/manifest.json sha256 {c.manifest_sha256}, "
        f"dvc.lock md5 {provenance.out_md5(p.lock, 'data/prepared')}"
    )
    if c.saved is None:
        return lines + [f"  model      {p.relative(c.model_path)}: missing"]
    lines += _describe_training(c, p)
    lines.append(
        f"  model      {p.relative(c.model_path)} sha256 {c.model_sha256}, md5 {c.model_md5}" + _registered(c, p)
    )
    if c.metrics:
        numbers = ", ".join(f"{k} {c.metrics[k]:.6g}" for k in KEY_METRICS if k in c.metrics)
        lines.append(f"  metrics    {c.metrics_path}: {numbers}")
    return lines


def _describe_training(c: Chain, p: Project) -> list[str]:
    tags = c.run.data.tags if c.run else {}
    spec = {k: v for k, v in c.saved["spec"].items() if k not in ("description", "train")}
    return [
        f"  training   {c.stage('train')} (dvc.lock entry sha256 {provenance.entry_digest(p.lock, c.stage('train'))})",
        f"             MLflow run {c.saved.get('mlflow_run_id')} ({c.run.info.status if c.run else 'missing'}), "
        f"git commit {tags.get('git_commit', UNKNOWN)} (dirty: {tags.get('git_dirty', UNKNOWN)})",
        f"             data manifest sha256 {c.saved['data_manifest_sha256']}",
        "             variant " + " ".join(f"{k}={v}" for k, v in spec.items()),
        "             train " + " ".join(f"{k}={v}" for k, v in c.saved["train"].items()),
    ]


def _registered(c: Chain, p: Project) -> str:
    if c.run is None:
        return ""
    versions = p.client.search_model_versions(f"run_id = '{c.run.info.run_id}'")
    return "".join(f", registered as {v.name} version {v.version}" for v in versions)


# ---------------------------------------------------------------- the checks


def check(c: Chain, p: Project) -> list[str]:
    """One line per broken link."""
    if c.saved is None:
        return [f"model missing: {p.relative(c.model_path)} does not exist (dvc repro {c.stage('train')})"]
    return [
        *_data_changed(c, p),
        *_params_edited(c, p),
        *_model_replaced(c, p),
        *_run_missing(c, p),
        *_metrics_stale(c, p),
    ]


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


# ---------------------------------------------------------------- command line


def lineage(target: str, root: Path) -> tuple[list[str], list[str]]:
    """(the chain of every run TARGET names, printed; one line per broken link)."""
    project = Project.open(root)
    lines, problems = [], []
    for name, model_path in resolve(target, project):
        chain = gather(project, name, model_path)
        lines += describe(chain, project)
        problems += [f"{name}: {problem}" for problem in check(chain, project)]
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.lineage", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="run name (model01-seed0), variant, model file or MLflow run id")
    parser.add_argument("--root", type=Path, default=paths.root(), help="the project checkout (default: this one)")
    args = parser.parse_args(argv)
    try:
        lines, problems = lineage(args.target, args.root.resolve())
    except (ConfigError, LookupError, DataError) as err:
        print(f"lineage: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print("\n".join(problems) if problems else "lineage: every link matches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
