"""Keep the root run's finished runs in git, after each run: copy a checkout's record files into the record
(reports/results/rootrun-cpu/, laid out as the checkout's root) and check them as the results README asks.

    python -m scripts.keep_root_run build/rootrun

Refuses, copying nothing, when the checkout's dvc.lock changes or drops a stage the record keeps (prepare's
data/prepared and the classifier most of all: every kept run was measured against them). Then, for each run the
record did not have, it prints whether its history (epoch, losses, LR) and its test metrics equal its twin's in the
2026-12-02/03 matrices, and a row for the results README's table of kept runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import pandas as pd
import yaml
from dvc.utils.serialize import dump_yaml, load_yaml

from pipeline.provenance import stage_name

RESULTS = Path(__file__).resolve().parents[1] / "reports" / "results"
RECORD = RESULTS / "rootrun-cpu"
TWINS = {"": RESULTS / "standin-study4-cpu-15ep", "_linear": RESULTS / "standin-linear4-cpu-15ep"}
REFERENCE = Path(__file__).resolve().parents[1] / "pipeline" / "reference.yaml"
COPIED = ("params.yaml", "reports/classifier.json")  # and dvc.lock, less the entries of runs not kept (write_lock)
DIRS = ("reports/metrics", "reports/history", "reports/per_class", "reports/samples")
HISTORY_COLUMNS = ["epoch", "train_loss", "train_objective", "val_loss", "lr"]
RUN_STAGES = ("train@", "evaluate@")  # a (variant, seed) run's stages
WRITTEN_SINCE = {"collapsed", "output_range", "run", "data_manifest_sha256"}  # not in the twins, or not comparable


def lock_stages(root: Path) -> dict:
    path = root / "dvc.lock"
    return load_yaml(path)["stages"] if path.is_file() else {}


def variant_and_seed(run: str) -> tuple[str, int]:
    """model04_linear-seed2 -> ("model04_linear", 2): the run names of pipeline.lib.config.run_name."""
    variant, _, seed = run.rpartition("-seed")
    return variant, int(seed)


def kept_entries(stages: dict, runs: set[str]) -> dict:
    """The dvc.lock entries the record keeps: a run's train and evaluate entries only once its metrics are kept (a
    run trained but not evaluated is trained again next time: its model is not kept), every other stage's."""
    of_runs = {stage_name(kind, *variant_and_seed(run)) for run in runs for kind in ("train", "evaluate")}
    return {name: entry for name, entry in stages.items() if not name.startswith(RUN_STAGES) or name in of_runs}


def changed_stages(record: Path, checkout: Path) -> list[str]:
    """The record's stages whose dvc.lock entry the checkout does not have as it is."""
    kept, now = lock_stages(record), lock_stages(checkout)
    return [name for name, entry in kept.items() if now.get(name) != entry]


def write_lock(checkout: Path, record: Path, runs: set[str]) -> None:
    """The checkout's dvc.lock, as DVC writes it, less the entries of runs the record does not keep."""
    lock = load_yaml(checkout / "dvc.lock")
    dump_yaml(record / "dvc.lock", {**lock, "stages": kept_entries(lock["stages"], runs)})


def history_matches(new: Path, twin: Path) -> bool:
    """Epoch, losses and LR equal as written, every digit (seconds and speed differ from machine to machine)."""
    return pd.read_csv(new, dtype=str)[HISTORY_COLUMNS].equals(pd.read_csv(twin, dtype=str)[HISTORY_COLUMNS])


def metric_differences(new: dict, twin: dict) -> list[str]:
    return sorted(key for key in twin.keys() - WRITTEN_SINCE if new.get(key) != twin[key])


def twin_report(run: str, checkout: Path, twins: dict[str, Path]) -> str:
    twin = twins["_linear" if variant_and_seed(run)[0].endswith("_linear") else ""]
    history, metrics = (Path("reports/history") / f"{run}.csv", Path("reports/metrics") / f"{run}.json")
    twin_history, twin_metrics = twin / "history" / f"{run}.csv", twin / "metrics" / f"{run}.json"
    if not (twin_history.is_file() and twin_metrics.is_file()):
        return f"{run}: no twin in {twin}"
    same_history = history_matches(checkout / history, twin_history)
    differ = metric_differences(*(json.loads(p.read_text()) for p in (checkout / metrics, twin_metrics)))
    history_said = "equal to" if same_history else "DIFFERENT from"
    metrics_said = "equal" if not differ else f"DIFFERENT in {', '.join(differ)}"
    return f"{run}: history {history_said} its twin's ({twin.name}), test metrics {metrics_said}"


def table_row(run: str, checkout: Path, published: dict[str, float]) -> str:
    """The results README's row: test MSE, its ratio to the published weights', dead units, PSNR per image, and the
    training seconds with the median epoch."""
    metrics = json.loads((checkout / "reports" / "metrics" / f"{run}.json").read_text())
    seconds = pd.read_csv(checkout / "reports" / "history" / f"{run}.csv")["seconds"]
    variant, seed = variant_and_seed(run)
    study = published.get(variant.removesuffix("_linear"))
    cells = [
        f"{variant} seed {seed}",
        f"{metrics['mse']:.5f}",
        f"{metrics['mse'] / study:.2f}" if study else "n/a",
        str(metrics["dead_latent_units"]),
        f"{metrics['psnr']:.2f} dB",
        f"{seconds.sum():,.0f} ({statistics.median(seconds):.1f})",
    ]
    return "| " + " | ".join(cells) + " |"


def keep(checkout: Path, record: Path, twins: dict[str, Path]) -> list[str]:
    """Copies the checkout's record files into the record; returns what to print. ValueError: nothing copied."""
    missing = [name for name in (*COPIED, "dvc.lock", *DIRS) if not (checkout / name).exists()]
    if missing:
        raise ValueError(f"{checkout}: not a checkout that ran the matrix: no {', '.join(missing)}")
    if changed := changed_stages(record, checkout):
        raise ValueError(f"{checkout}/dvc.lock changes or drops kept stages: {', '.join(changed)}; nothing copied")
    kept = {path.stem for path in (record / "reports" / "metrics").glob("*.json")}
    new = sorted(path.stem for path in (checkout / "reports" / "metrics").glob("*.json") if path.stem not in kept)
    published = {model: row["mse"] for model, row in yaml.safe_load(REFERENCE.read_text())["published_weights"].items()}
    lines = [line for run in new for line in (twin_report(run, checkout, twins), table_row(run, checkout, published))]
    for name in DIRS:
        shutil.copytree(checkout / name, record / name, dirs_exist_ok=True)
    for name in COPIED:
        (record / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(checkout / name, record / name)
    write_lock(checkout, record, kept | set(new))  # last: once what it names is there
    return [*lines, f"kept {len(kept) + len(new)} runs in {record} ({len(new)} new)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.keep_root_run", description=__doc__)
    parser.add_argument("checkout", type=Path, help="the checkout running the matrix, e.g. build/rootrun")
    parser.add_argument("--record", type=Path, default=RECORD, help="where the record is kept (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        lines = keep(args.checkout, args.record, TWINS)
    except (ValueError, OSError, yaml.YAMLError) as err:
        print(f"keep_root_run: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
