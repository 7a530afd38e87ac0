"""The tests of scripts.keep_root_run: checkouts and records laid out as the root run's, with dvc.lock entries that
name their files' md5; a pytest plugin (tests/conftest.py), for its fixtures root_twins and root_record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from scripts import keep_root_run

HISTORY = "epoch,train_loss,train_objective,val_loss,lr,seconds,images_per_s,val_output_range\n"
PARAMS = {"seeds": [0, 1, 2], "train": {"lr": 0.003}}
TRAIN_OUT, EVALUATE_OUTS = "history/{}.csv", ("metrics/{}.json", "per_class/{}.csv", "samples/{}.npy")
PREPARED, CLASSIFIER = {"path": "data/prepared", "md5": "a.dir"}, {"path": "models/classifier.pt", "md5": "b"}


def write_run(root: Path, run: str, mse: float, train_loss: str = "0.5", reports: str = "reports/") -> None:
    """A run's uncached outputs under root/<reports>: the record's layout, or a twin snapshot's with reports=""."""
    rows = "".join(
        f"{epoch},{train_loss},{train_loss},0.25,0.001,{s},100,0.9\n" for epoch, s in enumerate((10, 30, 20), 1)
    )
    texts = (HISTORY + rows, json.dumps({"mse": mse, "psnr": 25.0, "dead_latent_units": 2, "run": {}}), "c,m\n", "")
    for name, text in zip((TRAIN_OUT, *EVALUATE_OUTS), texts):
        (root / reports / name.format(run)).parent.mkdir(parents=True, exist_ok=True)
        (root / reports / name.format(run)).write_text(text)


def outs(root: Path, *paths: str) -> list[dict]:
    return [{"path": path, "hash": "md5", "md5": hashlib.md5((root / path).read_bytes()).hexdigest()} for path in paths]


def entries(root: Path, run: str, evaluated: bool = True) -> dict:
    """The train (and evaluate) entries dvc.lock would hold for the run's files under root: train reads prepare's
    output and writes the model, evaluate reads the model and the classifier's."""
    variant, seed = keep_root_run.variant_and_seed(run)
    model = {"path": f"models/{run}.pt", "md5": f"model of {run}"}
    found = {
        f"train@{variant}-{seed}": {
            "deps": [PREPARED],
            "params": {"params.yaml": {"train": PARAMS["train"]}},
            "outs": [model, *outs(root, f"reports/{TRAIN_OUT.format(run)}")],
        }
    }
    if evaluated:
        found[f"evaluate@{variant}-{seed}"] = {
            "deps": [PREPARED, model, CLASSIFIER],
            "outs": outs(root, *(f"reports/{n.format(run)}" for n in EVALUATE_OUTS)),
        }
    return found


def write_checkout(root: Path, runs: dict[str, float], extra: dict | None = None, trained: str | None = None) -> Path:
    """A checkout whose dvc.lock records prepare, the classifier, each run's entries and `extra` ones; `trained`:
    a run trained but not evaluated."""
    for run, mse in runs.items():
        write_run(root, run, mse)
    (root / "reports" / "classifier.json").write_text("{}")
    lock = {
        "prepare": {"outs": [PREPARED]},
        "classifier": {"deps": [PREPARED], "outs": [CLASSIFIER, *outs(root, "reports/classifier.json")]},
    }
    for run in runs:
        lock.update(entries(root, run))
    if trained:
        write_run(root, trained, 0.1)
        (root / "reports" / "metrics" / f"{trained}.json").unlink()
        lock.update(entries(root, trained, evaluated=False))
    lock.update(extra or {})
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": lock}, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def twin_snapshots(root: Path) -> dict[str, Path]:
    """The 2026-12-02/03 matrices' layout: model04 seed 0 in the study's, its twin (another train loss) in the other."""
    root_twins = {"": root / "study4", "_linear": root / "linear4"}
    write_run(root_twins[""], "model04-seed0", 0.0038, reports="")
    write_run(root_twins["_linear"], "model04_linear-seed0", 0.0031, train_loss="0.4", reports="")
    return root_twins


@pytest.fixture
def root_twins(tmp_path: Path) -> dict[str, Path]:
    """The twin snapshots a kept run is compared with."""
    return twin_snapshots(tmp_path)


@pytest.fixture
def root_record(tmp_path: Path) -> Path:
    """A record that keeps model01 seed 0."""
    return write_checkout(tmp_path / "record", {"model01-seed0": 0.00446})
