"""`python -m pipeline.tools.lineage TARGET`: print a run's lineage and check that every link still matches.

TARGET: a run (model01-seed0), a variant (every seed in params.yaml), a model file, or an MLflow run id.
The chain: raw data sha256s -> prepared manifest -> training (params, code commit, MLflow run) -> model
file -> metrics. Each link is compared with what was recorded when it was made (in the model file, the
metrics JSON, the MLflow run and dvc.lock). Exit status 0: every link matches; 1: one line per broken link.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from pipeline import paths, provenance, tracking
from pipeline.lib import prepared, schema
from pipeline.lib.config import ConfigError, Params, load_params, run_name
from pipeline.lib.io import DataError, load_torch, md5_file, sha256_file
from pipeline.tools.lineage_checks import RUN_NAME, check
from pipeline.tools.server_process import answers_health

KEY_METRICS = ("mse", "psnr", "psnr_pooled", "ssim", "dead_latent_units", "n_test")
UNKNOWN = provenance.UNKNOWN
BEST_SUFFIX = paths.best_model_file("run").name.removeprefix("run")  # ".best.pt"


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
        if uri.startswith(("http://", "https://")) and not answers_health(uri):  # else MLflow retries for minutes
            raise LookupError(
                f"MLflow tracking server {uri} does not answer; start it, or unset MLFLOW_TRACKING_URI to read the "
                "local sqlite store"
            )
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
        return paths.under(Path(), paths.metrics_file(self.name)).as_posix()


def resolve(target: str, project: Project) -> list[tuple[str, Path]]:
    """(run name, model file) of every run TARGET names."""
    path = next((p for p in (Path(target), project.root / target) if p.suffix == ".pt" and p.is_file()), None)
    if path:
        saved = load_model_meta(path)
        _refuse_if_not_trained(path, saved)
        name = run_name(saved["variant"], saved["seed"])
        if path.name.endswith(BEST_SUFFIX):  # nothing records its digest: checked as the run's model it would fail
            raise LookupError(
                f"{path}: {name}'s checkpoint of lowest val loss (epoch {saved.get('best_epoch', '?')}), which no "
                f"stage reads and no record names; the run's lineage: python -m pipeline.tools.lineage {name}"
            )
        return [(name, path)]
    if Path(target).suffix == ".pt":  # not there (yet): the run whose model file it would be, if it is one
        expected = paths.under(project.root, paths.model_file(Path(target).stem)).resolve()
        named = {Path(target).resolve(), (project.root / target).resolve()}  # from here, or from the project's root
        if not RUN_NAME.fullmatch(Path(target).stem) or expected not in named:
            raise LookupError(f"{target}: no such model file")
        target = Path(target).stem
    if target in project.params.variants:
        names = [run_name(target, seed) for seed in project.params.seeds]
    elif match := RUN_NAME.fullmatch(target):
        if match["variant"] not in project.params.variants:
            raise LookupError(f"{target}: params.yaml has no variant {match['variant']}")
        names = [target]
    else:
        run = project.run(target)
        tags = run.data.tags if run else {}
        if "seed" not in tags:
            what = f"an MLflow run of stage {tags['stage']}, not" if "stage" in tags else "not a model file,"
            raise LookupError(
                f"{target}: {what} a variant in params.yaml, a run name like model01-seed0, nor a training run in "
                f"{project.uri}"
            )
        names = [run_name(tags["variant"], int(tags["seed"]))]
    return [(name, paths.under(project.root, paths.model_file(name))) for name in names]


def _refuse_if_not_trained(path: Path, saved: dict) -> None:
    """Lineage traces a training run's model; the classifier's and the study's weights have records of their own."""
    if "variant" not in saved:
        raise LookupError(f"{path}: not a training run's model file (no variant; the classifier's?)")
    if "seed" not in saved:
        raise LookupError(f"{path}: a model file from before seeds (no 'seed' key); retrain it with dvc repro")
    if saved["seed"] < 0:
        raise LookupError(
            f"{path}: the study's published weights for {saved['variant']}, not a training run; stage "
            f"study@{saved['variant']} measured them: {paths.study_metrics_file(saved['variant']).as_posix()}"
        )


def load_model_meta(path: Path) -> dict | None:
    """A model file's metadata without its weights; None if there is no such file."""
    if not path.exists():
        return None
    return {k: v for k, v in load_torch(path, "").items() if k != "state_dict"}


def gather(project: Project, name: str, model_path: Path) -> Chain:
    match = RUN_NAME.fullmatch(name)
    data_dir = paths.under(project.root, paths.prepared_dir())
    metrics_file = paths.under(project.root, paths.metrics_file(name))
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
