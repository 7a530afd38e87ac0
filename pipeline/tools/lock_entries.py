"""The dvc.lock entries the parallel executor writes itself, under provenance's lock guard: a stage that ran on
another node adopted here (--remote), and the file's stage order once every stage is committed."""

from __future__ import annotations

from pathlib import Path

from dvc.exceptions import DvcException
from dvc.repo import Repo
from dvc.utils.serialize import dump_yaml, load_yaml

from pipeline import provenance
from pipeline.tools import ray_tasks


class CheckoutDiffers(RuntimeError):
    """A stage a node ran is not unchanged here: that node's checkout is not this one's."""


def adopt(root: Path, name: str, entry: dict, uncached: dict, remote: str) -> None:
    """A stage a node ran and pushed: its dvc.lock entry and uncached outputs written here, its cached outputs pulled
    from the remote. DVC must then find it unchanged here too, or that node's checkout is not this one's: then the
    stage's previous entry and outputs are put back, so that this checkout stays as it was."""
    repo = Repo(str(root))
    before_files = {**{path: None for path in uncached}, **ray_tasks.uncached_outputs(repo, [name])}
    before_entry = set_lock_entry(root, name, entry)
    ray_tasks.write_files(root, uncached)
    try:
        repo.pull(targets=[name], remote=remote, force=True)
        fresh = Repo(str(root))  # an index that reads the entry just written
        stage = ray_tasks.stage_of(fresh, name)
        with fresh.lock:
            if stage.changed():
                raise CheckoutDiffers(f"its node's checkout differs from this one: {differences(stage)}")
    except (CheckoutDiffers, DvcException):
        set_lock_entry(root, name, before_entry)
        ray_tasks.write_files(root, before_files)
        if before_entry:
            Repo(str(root)).checkout(targets=[name], force=True)
        raise


def set_lock_entry(root: Path, name: str, entry: dict | None) -> dict | None:
    """Writes (or with None removes) a stage's dvc.lock entry; returns the one it replaced."""
    lock = root / "dvc.lock"
    with provenance.lock_guard(root):
        data = load_yaml(lock) if lock.exists() else {"schema": "2.0", "stages": {}}
        before = data["stages"].pop(name, None)
        if entry is not None:
            data["stages"][name] = entry
        dump_yaml(lock, data)
    return before


def differences(stage) -> str:
    """What DVC finds changed in a stage, in one line: `pipeline/stages/report.py modified, changed command`."""
    found = []
    for item in next(iter(stage.status().values()), []):
        changes = item.values() if isinstance(item, dict) else [{item: ""}]
        found += [f"{path} {what}".strip() for change in changes for path, what in change.items()]
    return ", ".join(found)


def order_lock(root: Path, names: list[str]) -> None:
    """dvc.lock's stages in the order of names (dvc.yaml's), as a sequential `dvc repro` writes them; an entry not
    named keeps its place after them. No dvc.lock yet (no stage finished): nothing to order."""
    lock = root / "dvc.lock"
    with provenance.lock_guard(root):
        if not lock.exists():
            return
        data = load_yaml(lock)
        order = [name for name in names if name in data["stages"]]
        order += [name for name in data["stages"] if name not in order]
        dump_yaml(lock, {**data, "stages": {name: data["stages"][name] for name in order}})
