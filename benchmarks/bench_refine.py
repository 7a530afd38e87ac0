"""Encode-time latent refinement: milliseconds per image and the quality it reaches, two versions side by side.

    python -m benchmarks.bench_refine --before REV   # REV's refinement (its Adam, 100 steps) against this tree's
    python -m benchmarks.bench_refine --before REV --before-method lbfgs   # REV's L-BFGS against this tree's
    python -m benchmarks.bench_refine                # this tree's Adam (100 steps) against its L-BFGS

Each version refines the same test images with the same trained model (default models/model01_bn-seed0.pt and
data/prepared: train it first with `dvc exp run -S 'matrix=[model01_bn]'`, or pass --model and --prepared) in its
own fresh process on the CPU, the versions interleaved --repeats times so that both see the same machine load; the
fastest repeat counts. --chunks K interleaves them more finely, part by part (each part every K-th image), for long
runs such as the whole test split (--per-class 400), where the load can change within one version's run. The images
are the first --per-class test images of every class. Quality is measured here, one way for both: the refined
latents through the uint8 stream's grid, decoded, as evaluate scores them (pooled PSNR, the issue's measure, and
mean per-image PSNR). Writes reports/benchmarks_refine.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.arguments import git_revision, positive
from benchmarks.bench_overhead import checkout
from pipeline import paths
from pipeline.lib import encoding, evaluation, models, prepared, quantize
from pipeline.lib.config import load_params, run_name
from pipeline.lib.io import sha256_file, write_json
from tests.conftest import REPO

# run in each version's own tree; only calls whose signatures both versions share
REFINE_ONCE = """
import json, sys, time
from pathlib import Path
import numpy as np, torch
from pipeline.lib import device, models, prepared, refine
from pipeline.lib.config import CodecConfig
try:
    from pipeline.lib import encoding
except ImportError:  # before the latents' helpers left the codec module
    from pipeline.lib import codec as encoding
model_file, prepared_dir, index_file, settings, out = sys.argv[1:]
settings = json.loads(settings)
if "refine_method" not in CodecConfig.__dataclass_fields__ and settings.pop("refine_method") != "adam":
    sys.exit("this revision has no refine_method: Adam is its only refinement")  # before d4ded34
(getattr(device, "configure_compute", None) or device.configure_determinism)(0)  # its name before bbfa4cc
model, saved = models.load_model(Path(model_file), torch.device("cpu"))
calibration = encoding.saved_calibration(model, saved, Path(prepared_dir))
images = prepared.load_split(Path(prepared_dir), "test")[0][np.load(index_file)]
latents = encoding.encode_latents(model, images)
started = time.perf_counter()
refined = refine.refine_latents(model, images, latents, CodecConfig(**settings), calibration)
np.savez(out, refined=refined.numpy(), seconds=time.perf_counter() - started)
"""
ADAM = {"refine_steps": 100, "refine_lr": 0.5, "refine_method": "adam"}  # the first method, its documented setting


def stratified(labels: np.ndarray, per_class: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == label)[:per_class] for label in np.unique(labels)])


def refine_once(tree: Path, model: Path, prepared_dir: Path, index_file: Path, settings: dict, out: Path) -> dict:
    command = [sys.executable, "-c", REFINE_ONCE, str(model), str(prepared_dir), str(index_file), json.dumps(settings)]
    result = subprocess.run([*command, str(out)], cwd=tree, capture_output=True, text=True)
    if result.returncode != 0:
        version = "this checkout" if tree == REPO else "the --before revision's checkout (removed by now)"
        sys.exit(f"bench_refine: refinement failed in {version}:\n{result.stderr[-3000:]}")
    with np.load(out) as saved:
        return {"refined": torch.from_numpy(saved["refined"]), "seconds": float(saved["seconds"])}


def joined(parts: list[dict], chunks: list[np.ndarray]) -> dict:
    """One version's runs over the chunks as one run over all the images: the times summed, the latents in order."""
    refined = torch.empty(sum(map(len, chunks)), parts[0]["refined"].shape[1])
    for part, rows in zip(parts, chunks):
        refined[torch.from_numpy(rows)] = part["refined"]
    return {"refined": refined, "seconds": sum(part["seconds"] for part in parts)}


def quality(model, latents: torch.Tensor, x: torch.Tensor, calibration, cfg) -> dict:
    """The latents as the uint8 stream carries them, decoded and scored by evaluate's own summary (cfg: the
    evaluate params): psnr_pooled_uint8 (the issue's measure), psnr_uint8 (mean per image), ssim_uint8, ..."""
    restored = quantize.dequantize_uint8(quantize.uint8_codes(latents, *calibration), *calibration)
    with torch.no_grad():
        return evaluation.summary(x, evaluation.batched(model.decode, restored, cfg.batch_size), cfg, "_uint8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_refine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        type=git_revision,
        help="a git revision whose refinement is measured too (see --before-method)",
    )
    parser.add_argument(
        "--before-method",
        choices=["adam", "lbfgs"],
        default="adam",
        help="what REV runs: its Adam (100 steps, the default) or its L-BFGS with this tree's --steps",
    )
    parser.add_argument("--model", type=Path, default=paths.model_file(run_name("model01_bn", 0)))
    parser.add_argument("--prepared", type=Path, default=paths.prepared_dir())
    parser.add_argument("--per-class", type=positive, default=12, help="test images per class (default 12)")
    parser.add_argument("--steps", type=positive, default=40, help="this tree's L-BFGS codec.refine_steps (default 40)")
    parser.add_argument("--repeats", type=positive, default=2)
    parser.add_argument(
        "--chunks",
        type=positive,
        default=1,
        help="split the images into this many interleaved parts and alternate the versions part by part, so that "
        "both see the same machine load over a long run (default 1)",
    )
    parser.add_argument("--out", type=Path, default=paths.reports_dir() / "benchmarks_refine.json")
    args = parser.parse_args(argv)
    missing = {args.model: "train it first (dvc exp run -S 'matrix=[model01_bn]')", args.prepared: "dvc repro prepare"}
    for path, how in missing.items():
        if not path.exists():
            parser.error(f"{path} does not exist: {how}, or pass --model/--prepared")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images, labels = prepared.load_split(args.prepared, "test")
    index = stratified(labels, args.per_class)
    if args.chunks > len(index):
        sys.exit(f"bench_refine: --chunks {args.chunks} is more than the {len(index)} images")
    base = Path(tempfile.mkdtemp(prefix="bench-refine-"))
    versions = refinement_versions(args, base)
    try:
        runs = timed_runs(args, versions, index, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the revision's tree, the index files and the refined latents
    result = scored(args, versions, runs, images[index])
    write_json(args.out, result)
    print(json.dumps({key: result[key] for key in ("one_pass", "before", "after")}, indent=1))
    print(f"after: {result['speedup']:.1f}x faster per image, {result['psnr_pooled_uint8_change_db']:+.3f} dB pooled")
    return 0


def refinement_versions(args, base: Path) -> dict[str, tuple[Path, dict]]:
    """Each version's tree (REV's checked out under `base`) and refinement settings."""
    lbfgs = {"refine_steps": args.steps, "refine_method": "lbfgs"}
    before = lbfgs if args.before_method == "lbfgs" else ADAM
    return {"before": (base / "before", before) if args.before else (REPO, ADAM), "after": (REPO, lbfgs)}


def timed_runs(args, versions: dict, index: np.ndarray, base: Path) -> dict[str, list[dict]]:
    """Each version's refinement of the images, --repeats times, the versions interleaved chunk by chunk."""
    if args.before:
        checkout(args.before, base / "before")
    chunks = [np.arange(len(index))[first :: args.chunks] for first in range(args.chunks)]
    for number, rows in enumerate(chunks):
        np.save(base / f"index{number}.npy", index[rows])
    runs = {name: [] for name in versions}
    for repeat in range(args.repeats):
        parts = {name: [] for name in versions}
        for number in range(len(chunks)):
            for name, (tree, settings) in versions.items():
                chunk_index = base / f"index{number}.npy"
                parts[name].append(
                    refine_once(tree, args.model, args.prepared, chunk_index, settings, base / "out.npz")
                )
        for name in versions:
            runs[name].append(joined(parts[name], chunks))
            ms = 1000 * runs[name][-1]["seconds"] / len(index)
            print(f"{name:6} repeat {repeat + 1}: {ms:7.1f} ms per image", flush=True)
    return runs


def scored(args, versions: dict, runs: dict, images: np.ndarray) -> dict:
    """The versions' times and the quality of their latents, beside one encoder pass's."""
    model, saved = models.load_model(args.model, torch.device("cpu"))
    calibration = encoding.saved_calibration(model, saved, args.prepared)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    cfg = load_params(paths.params_file()).evaluate

    def score(latents: torch.Tensor) -> dict:
        return quality(model, latents, x, calibration, cfg)

    result = {
        "what": "encode-time refinement of the same test images, each version in its own process, CPU",
        "model": str(args.model),
        "model_sha256": sha256_file(args.model),
        "images": len(images),
        "one_pass": score(encoding.encode_latents(model, images)),
        **{name: summary(args, versions[name], runs[name], score, len(images)) for name in versions},
    }
    result["speedup"] = result["before"]["ms_per_image"] / result["after"]["ms_per_image"]
    result["psnr_pooled_uint8_change_db"] = result["after"]["psnr_pooled_uint8"] - result["before"]["psnr_pooled_uint8"]
    return result


def summary(args, version, runs: list[dict], score, n: int) -> dict:
    tree, settings = version
    if any(not torch.equal(run["refined"], runs[0]["refined"]) for run in runs):
        sys.exit(f"bench_refine: {settings} gave different latents in different repeats")
    return {
        "code": args.before if tree != REPO else "this working tree",
        "settings": settings,
        "ms_per_image": 1000 * min(run["seconds"] for run in runs) / n,
        "ms_per_image_repeats": [1000 * run["seconds"] / n for run in runs],
        **score(runs[0]["refined"]),
    }


if __name__ == "__main__":
    sys.exit(main())
