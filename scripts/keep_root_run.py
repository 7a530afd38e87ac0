"""Keep the root run's finished runs in git, after each run: copy a checkout's record files into the record
(reports/results/rootrun-cpu/, laid out as the checkout's root) and check them as the results README asks.

    python -m scripts.keep_root_run build/rootrun

A run is kept once the checkout's dvc.lock holds both its train and its evaluate entry (a run trained but not
evaluated trains again: its model is not kept). The record keeps those entries, prepare's and the classifier's, the
baselines' and the study stages' once run, the report's while it read the files the checkout holds now, and the files
under reports/ that they name. Refuses, copying nothing, when the checkout's dvc.lock changes or drops a kept stage
(one run again to the same outputs is taken), when a file or directory differs from the md5 its entry records, when
params.yaml differs from what a kept stage ran with, when a stage read another version of a kept stage's output than
that stage's entry records, or when a run has metrics but no lock entries. With --retrained-classifier it takes a
classifier trained again (on another kind of CPU its training is not the same to the bit): the runs kept before keep
their entries, which name the classifier each was measured against, and a new run must have read the new one. Then,
for each new run, whether it equals its twin in the 2026-12-02/03 matrices and its row for the results README's table
of kept runs; last, the executor's command for the runs left (the study's four seed by seed, then their twins).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import yaml
from dvc.exceptions import DvcException
from dvc.utils.serialize import dump_yaml, parse_yaml

from pipeline.lib import stats
from pipeline.lib.config import Params, load_params, run_name
from pipeline.provenance import lock_guard, stage_name
from pipeline.tools import warm_stages
from pipeline.tools.lineage_checks import params_drift
from scripts.root_run_files import content_md5, read_files, recorded_files, remove_outputs, stale_inputs
from scripts.root_run_twins import RESULTS, TWINS, published_mse, table_row, twin_report, variant_and_seed

RECORD = RESULTS / "rootrun-cpu"
RECORDED_STAGES = ("prepare", "classifier")  # besides the runs' own stages
REPORT_INPUTS = ("baselines", "study@")  # name prefixes: the report's inputs besides the runs'
REPORT = "report"  # drawn from the kept stages: kept when it read the checkout's files as they are now


def read_lock(root: Path) -> dict:
    """root's dvc.lock as DVC reads it ({} if none), read once under the lock the parallel executor holds while DVC
    rewrites it: the checks and the copy see one version of it."""
    path = root / "dvc.lock"
    if not path.is_file():
        return {}
    with lock_guard(root):
        text = path.read_text()
    return parse_yaml(text, path)


def lock_stages(root: Path) -> dict:
    return read_lock(root).get("stages", {})


def run_stages(run: str) -> list[str]:
    return [stage_name(kind, *variant_and_seed(run)) for kind in ("train", "evaluate")]


def evaluated_runs(stages: dict) -> set[str]:
    """The runs whose train and evaluate entries are both in dvc.lock, named by the metrics file evaluate wrote."""
    metrics = {
        Path(out["path"]).stem
        for name, entry in stages.items()
        if name.startswith("evaluate@")
        for out in entry.get("outs", [])
        if out["path"].startswith("reports/metrics/")
    }
    return {run for run in metrics if all(name in stages for name in run_stages(run))}


def kept_entries(stages: dict, runs: set[str]) -> dict:
    """The dvc.lock entries the record keeps besides the report's, in dvc.lock's order: prepare's, the classifier's,
    the runs', the baselines' and the study stages'."""
    keep = {*RECORDED_STAGES, *(name for run in runs for name in run_stages(run))}
    return {name: entry for name, entry in stages.items() if name in keep or name.startswith(REPORT_INPUTS)}


def with_report(checkout: Path, stages: dict, entries: dict) -> tuple[dict, list[str]]:
    """The entries with the report's, in dvc.lock's order, where the record can hold what the report read; else the
    entries alone and the report's inputs it cannot hold (changed since, or holding outputs of stages not kept: the
    history of a run trained but not evaluated)."""
    if REPORT not in stages:
        return entries, []
    left_out = set(recorded_files({name: entry for name, entry in stages.items() if name not in {*entries, REPORT}}))
    if stale := stale_inputs(checkout, stages[REPORT], left_out):
        return entries, stale
    return {name: entry for name, entry in stages.items() if name in entries or name == REPORT}, []


def ran_again(kept: dict, now: dict) -> list[str]:
    """The record's stages the checkout ran again to the same outputs (their code or params changed, not what they
    wrote): the record takes their new entries."""
    return [
        name
        for name, entry in kept.items()
        if name != REPORT and name in now and now[name] != entry and now[name].get("outs") == entry.get("outs")
    ]


def changed_stages(kept: dict, now: dict) -> list[str]:
    """The record's stages the checkout dropped or whose outputs it changed (one run again to the same outputs is
    not: ran_again). Not the report: drawn from the others, the checkout's replaces it."""
    return [
        name
        for name, entry in kept.items()
        if name != REPORT and (name not in now or now[name].get("outs") != entry.get("outs"))
    ]


def weights_only(entry: dict) -> dict:
    """The entry without its outputs' hashes and sizes: what a retrain with the same code, params and data leaves."""
    return {**entry, "outs": [{k: v for k, v in out.items() if k not in ("md5", "size")} for out in entry["outs"]]}


def inconsistencies(contents: dict[str, bytes | None], entries: dict, kept_before: set[str]) -> list[str]:
    """Files that differ from their entry's md5, params.yaml values that differ from what a stage ran with, and
    stages that read another version of a kept stage's output (evaluate a model train has since replaced). Not the
    classifier's for the stages kept_before: each names the classifier its run was measured against, which a later
    retrain may have replaced (--retrained-classifier)."""
    params = yaml.safe_load(contents["params.yaml"])
    problems = [
        f"{key}: {stage} ran with {old!r}, params.yaml has {new!r}"
        for stage in entries
        for key, old, new in params_drift(entries, stage, params)
    ]
    made = {out["path"]: (stage, out.get("md5")) for stage, entry in entries.items() for out in entry.get("outs", [])}
    problems += [
        f"{stage} read {dep['path']} with md5 {dep.get('md5')}, {made[dep['path']][0]} wrote {made[dep['path']][1]}"
        for stage, entry in entries.items()
        for dep in entry.get("deps", [])
        if dep["path"] in made and dep.get("md5") != made[dep["path"]][1]
        if not (stage in kept_before and made[dep["path"]][0] == "classifier")
    ]
    problems += [f"{path} is outside reports/" for path in recorded_files(entries) if ".." in Path(path).parts]
    for path, md5 in recorded_files(entries).items():
        if (actual := content_md5(contents, path)) != md5:
            problems.append(f"{path} has md5 {actual}, dvc.lock records {md5}")
    return problems


def classifier_retrained(before: dict, now: dict) -> bool:
    """The classifier's entry differs in its outputs' hashes alone: trained again with the same code, params and
    data (on another kind of CPU its weights are not the same to the bit)."""
    if "classifier" not in before or "classifier" not in now or before["classifier"] == now["classifier"]:
        return False
    return weights_only(before["classifier"]) == weights_only(now["classifier"])


def check_kept_stages(checkout: Path, before: dict, now: dict, retrained_classifier: bool) -> bool:
    """ValueError if the checkout's dvc.lock changes or drops a kept stage; whether it takes a retrained classifier."""
    retrained = classifier_retrained(before, now)
    taken = retrained_classifier and retrained
    if changed := [name for name in changed_stages(before, now) if not (taken and name == "classifier")]:
        hint = " (the classifier trained again to other weights: --retrained-classifier takes it)" if retrained else ""
        raise ValueError(
            f"{checkout}/dvc.lock changes or drops kept stages: {', '.join(changed)}{hint}; nothing copied"
        )
    return taken


def check_all_recorded(checkout: Path, stages: dict, evaluated: set[str]) -> None:
    """ValueError if a run has metrics that dvc.lock does not record (an evaluate not committed)."""
    unrecorded = sorted(p.stem for p in (checkout / "reports" / "metrics").glob("*.json") if p.stem not in evaluated)
    if unrecorded:
        absent = [name for run in unrecorded for name in run_stages(run) if name not in stages]
        raise ValueError(
            f"{', '.join(unrecorded)}: metrics, but dvc.lock has no {', '.join(absent)}; rerun "
            f"{' '.join(stage_name('evaluate', *variant_and_seed(run)) for run in unrecorded)} through the executor "
            "(or `dvc commit` the stage the executor named as not recorded); nothing copied"
        )


def keep(checkout: Path, record: Path, twins: dict[str, Path], retrained_classifier: bool = False) -> list[str]:
    """Copies the checkout's record files into the record; returns what to print. ValueError: nothing copied."""
    missing = [name for name in ("params.yaml", "dvc.lock") if not (checkout / name).is_file()]
    if missing:
        raise ValueError(f"{checkout}: not a checkout that ran the matrix: no {', '.join(missing)}")
    lock, record_stages = read_lock(checkout), lock_stages(record)
    stages = lock.get("stages", {})
    retrained = check_kept_stages(checkout, record_stages, stages, retrained_classifier)
    kept, evaluated = evaluated_runs(record_stages), evaluated_runs(stages)
    check_all_recorded(checkout, stages, evaluated)
    entries, stale = with_report(checkout, stages, kept_entries(stages, evaluated))
    contents = read_files(checkout, ["params.yaml", *recorded_files(entries)])
    if problems := inconsistencies(contents, entries, set(record_stages) - set(RECORDED_STAGES)):
        raise ValueError(f"{checkout} is not what its dvc.lock records: {'; '.join(problems)}; nothing copied")
    new = sorted(evaluated - kept)
    lines = [
        line for run in new for line in (twin_report(run, checkout, twins), table_row(run, checkout, published_mse()))
    ]
    if added := [name for name in entries if name.startswith(REPORT_INPUTS) and name not in record_stages]:
        lines.append(f"kept {', '.join(added)}: the report's inputs besides the runs")
    if again := ran_again(record_stages, stages):
        lines.append(
            f"{', '.join(again)} ran again to the same outputs: kept with the entries that name their code now"
        )
    if retrained:
        lines.append(
            f"the classifier trained again; {len(kept)} runs kept before name the one they were measured against"
        )
    lines += report_said(record_stages, entries, stale)
    remove_outputs(record, {name: entry for name, entry in record_stages.items() if entries.get(name) != entry})
    for path, data in contents.items():
        (record / path).parent.mkdir(parents=True, exist_ok=True)
        (record / path).write_bytes(data)
    dump_yaml(record / "dvc.lock", {**lock, "stages": entries})  # last: it names the runs
    return [*lines, f"kept {len(evaluated)} runs in {record} ({len(new)} new)"]


def report_said(before: dict, entries: dict, stale: list[str]) -> list[str]:
    if stale:
        return [f"the report is not kept: the record cannot hold {', '.join(stale)} as it read them; run it again"]
    if REPORT in before and REPORT not in entries:
        return ["the report is not kept: the checkout's dvc.lock has none (the record's is removed)"]
    return ["kept the report on these runs"] if REPORT in entries and before.get(REPORT) != entries[REPORT] else []


def runs_left(params: Params, kept: set[str]) -> list[str]:
    """The evaluate targets of the matrix's runs not kept, in the order to run them: each group of variants alike but
    for their strides (the study's four, then their twins), seed by seed, so that every layer has a seed early."""
    specs = {variant: dataclasses.asdict(params.variant(variant)) for variant in params.trained()}
    return [
        stage_name("evaluate", variant, seed)
        for group in stats.decoder_groups(specs)
        for seed in params.seeds
        for variant in group
        if run_name(variant, seed) not in kept
    ]


def continue_line(checkout: Path, record: Path) -> str:
    """The executor's command for the runs the record does not keep yet (once all are, the report's), ready to
    paste: each stage in a fresh interpreter, as the kept runs were (before the executor forked its stages), not
    forked; niced, so that the machine stays usable beside it."""
    recorded = lock_stages(record)
    left = runs_left(load_params(checkout / "params.yaml"), evaluated_runs(recorded))
    where = f"cd {shlex.quote(str(checkout))}"
    if not left and REPORT in recorded:
        return "every run of the matrix is kept, and the report on them"
    if not left:  # not the target report: the record keeps no model, so its runs would train again
        return f"every run of the matrix is kept; the report: {where} && dvc repro --single-item report"
    command = f"{warm_stages.FRESH_ENV}=1 nice -n 10 python -m pipeline.tools.parallel --jobs 1 {' '.join(left)}"
    return f"{len(left)} runs left; in the activated shell: {where} && {command}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.keep_root_run", description=__doc__)
    parser.add_argument("checkout", type=Path, help="the checkout running the matrix, e.g. build/rootrun")
    parser.add_argument("--record", type=Path, default=RECORD, help="where the record is kept (default: %(default)s)")
    parser.add_argument(
        "--retrained-classifier",
        action="store_true",
        help="take the checkout's classifier where it differs from the record's (trained again on another kind of CPU)",
    )
    args = parser.parse_args(argv)
    try:
        kept = keep(args.checkout, args.record, TWINS, args.retrained_classifier)
        lines = [*kept, continue_line(args.checkout, args.record)]
    except (ValueError, OSError, yaml.YAMLError, DvcException) as err:  # DVC's: a corrupt dvc.lock
        print(f"keep_root_run: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
