"""A kept run of the root matrix beside its twin in the 2026-12-02/03 matrices, and its row in the results README's
table of kept runs: what scripts.keep_root_run prints for each new run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import yaml

from pipeline.tools.lineage_checks import RUN_NAME

RESULTS = Path(__file__).resolve().parents[1] / "reports" / "results"
TWINS = {"": RESULTS / "standin-study4-cpu-15ep", "_linear": RESULTS / "standin-linear4-cpu-15ep"}
REFERENCE = Path(__file__).resolve().parents[1] / "pipeline" / "reference.yaml"
HISTORY_COLUMNS = ["epoch", "train_loss", "train_objective", "val_loss", "lr"]
WRITTEN_SINCE = {"collapsed", "output_range", "run", "data_manifest_sha256"}  # not in the twins, or not comparable


def variant_and_seed(run: str) -> tuple[str, int]:
    """model04_linear-seed2 -> ("model04_linear", 2): the run names of pipeline.lib.config.run_name."""
    match = RUN_NAME.fullmatch(run)
    return match["variant"], int(match["seed"])


def published_mse() -> dict[str, float]:
    """The study's published weights' test MSE per model, as pipeline/reference.yaml records it."""
    return {model: row["mse"] for model, row in yaml.safe_load(REFERENCE.read_text())["published_weights"].items()}


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
