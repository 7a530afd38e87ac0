"""Fault drill: each stage of a tiny generated project killed with SIGKILL (under `dvc repro`) as it renames its first
output into place, then its command run on a disk filled to the last byte as the stage starts; after each fault,
`dvc repro` of the stage. Prints a table of what happened.

    python -m scripts.fault_drill            # needs root for the full disk (a small tmpfs); ~5 min on 2 cores

The project lives on a tmpfs; "disk full" fills it to the last byte before the stage runs. Results go in
reports/results/README.md ("Faults tried").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from dvc.repo import Repo

from tests.conftest import REPO, TINY_SPEC, make_project
from tests.fakedata import make_emnist_dir

STAGES = ["prepare", "classifier", "baselines", "train@tiny-0", "evaluate@tiny-0", "report"]
# imported by every Python process started with this directory on PYTHONPATH; acts only in a stage's process
KILL_HOOK = """
import os, sys
if os.environ.get("FAULT_KILL_AT") and any(a.startswith("pipeline.stages.") for a in sys.orig_argv):
    import signal
    from pathlib import Path
    _replace, _targets = os.replace, [Path(p) for p in os.environ["FAULT_KILL_AT"].split(os.pathsep)]

    def replace(src, dst, *args, **kwargs):
        dst_path = Path(dst).resolve()
        if any(dst_path == t or t in dst_path.parents for t in _targets):
            os.kill(os.getpid(), signal.SIGKILL)  # the output is written, not yet renamed into place
        return _replace(src, dst, *args, **kwargs)

    os.replace = replace
if os.environ.get("FAULT_FILL") and any(a.startswith("pipeline.stages.") for a in sys.orig_argv):
    with open(os.environ["FAULT_FILL"], "wb", buffering=0) as filler:  # the disk full from this stage's first write on
        try:
            while True:
                filler.write(bytes(1 << 16))
        except OSError:
            pass
"""


COLUMNS = """Columns: `exit` of `dvc repro` (SIGKILL) or of the stage's command (disk full); the last error line;
`traceback` anywhere in stderr; the stage's outputs present after the fault; temporaries left beside them; what
`dvc status` says of the stage; MLflow runs left RUNNING; the same after `dvc repro --single-item` of the stage;
whether the outputs of the previous run were left byte-identical by the failed one (disk full: DVC did not remove
them first; n/a for SIGKILL, where `dvc repro --force` removes them before the stage starts)."""


def sh(cmd: list[str], root: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)


def stage_outs(root: Path, name: str) -> list[Path]:
    stage = next(s for s in Repo(str(root)).index.stages if s.name == name)
    return [Path(out.fs_path) for out in stage.outs]


def observe(root: Path, env: dict, name: str, result: subprocess.CompletedProcess) -> dict:
    """What a fault left: exit status, the error's last line, outputs present, temp files, DVC's view, MLflow runs."""
    outs = stage_outs(root, name)
    temps = [p for out in outs for p in out.parent.glob(f".{out.name}.*.tmp")]
    status = json.loads(sh(["dvc", "status", "--json", name], root, env).stdout or "{}")
    lines = (result.stderr or result.stdout).strip().splitlines()
    error = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
    return {
        "exit": result.returncode,
        "error line": error[:110],
        "traceback": "Traceback" in result.stderr,
        "outs present": f"{sum(o.exists() for o in outs)}/{len(outs)}",
        "temp files": len(temps),
        "dvc status": "changed" if status.get(name) else "up to date",
        "mlflow running": running_runs(root),
    }


def running_runs(root: Path) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiments, "attributes.status = 'RUNNING'")) if experiments else 0


def rerun(root: Path, env: dict, name: str) -> dict:
    result = sh(["dvc", "repro", "--single-item", name], root, env)
    after = observe(root, env, name, result)
    return {
        "rerun exit": result.returncode,
        "rerun dvc status": after["dvc status"],
        "rerun temp files": after["temp files"],
        "rerun mlflow running": after["mlflow running"],
    }


def sigkill(root: Path, env: dict, name: str) -> dict:
    targets = os.pathsep.join(str(p) for p in stage_outs(root, name))
    result = sh(["dvc", "repro", "--single-item", "--force", name], root, {**env, "FAULT_KILL_AT": targets})
    return {"stage": name, "fault": "SIGKILL at its first rename", **observe(root, env, name, result)}


def disk_full(root: Path, env: dict, name: str) -> dict:
    """The stage's own command (DVC's writes would fail first otherwise), its previous outputs in place."""
    stage = next(s for s in Repo(str(root)).index.stages if s.name == name)
    before = {out: md5(out) for out in stage_outs(root, name)}
    filler = root / "filler"
    try:
        result = sh(["bash", "-c", stage.cmd], root, {**env, "FAULT_FILL": str(filler)})
    finally:
        filler.unlink(missing_ok=True)
    intact = all(md5(out) == digest for out, digest in before.items())
    return {"stage": name, "fault": "disk full", **observe(root, env, name, result), "previous outs intact": intact}


def md5(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.md5(b"".join(p.read_bytes() for p in files if p.exists())).hexdigest()


def build(base: Path) -> tuple[Path, dict]:
    hook = base / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    data = make_emnist_dir(base / "emnist")
    root, env = make_project(base / "project", {"tiny": TINY_SPEC}, epochs=1, data_source=str(data))
    return root, {**env, "PYTHONPATH": str(hook)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.fault_drill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="768m", help="the tmpfs the project lives on")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "results" / "fault_drill.md")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="fault-drill-"))
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size}", "tmpfs", str(base)], capture_output=True)
    if mount.returncode:
        base.rmdir()
        reason = (mount.stderr.decode(errors="replace").strip() or "needs root").splitlines()[0]
        print(f"fault_drill: cannot mount a tmpfs ({reason}): no full disk to test on", file=sys.stderr)
        return 2
    rows = []
    try:
        root, env = build(base)
        for name in STAGES:
            for fault in (sigkill, disk_full):
                row = fault(root, env, name)
                rows.append({**row, **rerun(root, env, name)})
                print(rows[-1], flush=True)
    finally:
        subprocess.run(["umount", "-l", str(base)])
        shutil.rmtree(base, ignore_errors=True)
    table = pd.DataFrame(rows).fillna("n/a").to_markdown(index=False)
    print(table)  # first: an --out that cannot be written loses nothing of the drill
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Fault drill\n\n`python -m scripts.fault_drill`\n\n{COLUMNS}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
