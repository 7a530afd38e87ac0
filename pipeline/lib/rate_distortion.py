"""The rate-distortion picture, assembled by the report stage: every variant's real streams beside the
classical baselines (reports/baselines.json), written to reports/rate_distortion.json.

A variant contributes one point per form it can be stored in, each the mean over its seeds: `float32`
(4 bytes per latent dimension; not for entropy-coded variants, whose latent is already integer), `uint8`
(pipeline.lib.codec's uint8 stream), `uint8 range-coded` (the same codes in the codec's uint8_range stream) and
`entropy` (its range-coded stream, variants with rate_weight > 0). With
codec.refine_steps > 0 both uint8 streams carry the codec's refined latents, and `float32, refined` is added.
Bytes per image always include everything the decoder needs besides the model weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.lib import io
from pipeline.lib.io import DataError

FIELDS = ["method", "setting", "bytes_per_image", "psnr_pooled", "psnr", "ssim", "mse", "classifier_accuracy"]
# WebP quality 5's quality in about a quarter of its bytes: the reference's anchor on the stand-in
# (../shared/reference/ORIGINAL_STUDY.md, "Other anchors measured here"; not a number of the study's)
MOONSHOT = {"bytes_per_image": 32, "psnr_pooled": 27.1}
# a better model at the study's 32-number latent and at no more training FLOPs per image than model01
QUALITY_TARGET = {"latent_dim": 32, "psnr": 27.0, "ssim": 0.985}


def model_rows(means: pd.DataFrame) -> list[dict]:
    """One row per (variant, storage form), from the evaluate metrics averaged over seeds."""
    rows = []
    for variant, m in means.iterrows():
        dim = int(m.latent_dim)
        main = {
            "psnr_pooled": m.psnr_pooled,
            "psnr": m.psnr,
            "ssim": m.ssim,
            "mse": m.mse,
            "classifier_accuracy": m.get("classifier_accuracy"),
        }
        coded = pd.notna(m.get("bytes_per_image_entropy"))
        refined = f", refined ≤{int(m.refine_steps)} steps" if m.get("refine_steps", 0) > 0 else ""
        if not coded:
            rows.append({"method": variant, "setting": f"float32, {dim} dims", "bytes_per_image": 4.0 * dim, **main})
        if refined:
            rows.append(
                {
                    "method": variant,
                    "setting": f"float32{refined}, {dim} dims",
                    "bytes_per_image": 4.0 * dim,
                    **{key: m.get(f"{key}_refined") for key in main},
                    "classifier_accuracy": None,
                }
            )
        uint8 = {key: m.get(f"{key}_uint8") for key in main} | {"classifier_accuracy": None}
        rows.append(
            {
                "method": variant,
                "setting": f"uint8{refined}, {dim} dims",
                "bytes_per_image": m.bytes_per_image_uint8,
                **uint8,
            }
        )
        if pd.notna(m.get("bytes_per_image_uint8_range")):  # absent from metrics written before uint8_range
            rows.append(
                {
                    "method": variant,
                    "setting": f"uint8 range-coded{refined}, {dim} dims",
                    "bytes_per_image": m.bytes_per_image_uint8_range,
                    **uint8,
                }
            )
        if coded:  # one stream for the whole test set, and one file per image (header and checksum each)
            rows.append(
                {
                    "method": variant,
                    "setting": f"entropy-coded, {dim} dims",
                    "bytes_per_image": m.bytes_per_image_entropy,
                    **main,
                }
            )
            rows.append(
                {
                    "method": variant,
                    "setting": f"entropy-coded one file per image, {dim} dims",
                    "bytes_per_image": m.bytes_per_image_entropy_standalone,
                    **main,
                }
            )
    return rows


def load_baselines(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())["rows"]
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run the baselines stage first (dvc repro baselines)") from None


def assemble(means: pd.DataFrame, baselines: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(model_rows(means) + baselines).reindex(columns=FIELDS)
    table.insert(2, "kind", ["variant" if m in means.index else "baseline" for m in table.method])
    return table


def write_json(table: pd.DataFrame, out: Path) -> None:
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    io.write_json(out, rows)


def moonshot_finding(table: pd.DataFrame) -> str:
    """The moonshot, answered from the numbers: the best point at <= 32 bytes per image against 27.1 dB."""
    target_bytes, target_psnr = MOONSHOT["bytes_per_image"], MOONSHOT["psnr_pooled"]
    webp = table[(table.method == "webp") & (table.setting == "quality 5")]
    measured = (
        f"; here WebP quality 5 measures {webp.psnr_pooled.iloc[0]:.2f} dB at {webp.bytes_per_image.iloc[0]:.1f} B"
        if len(webp)
        else ""
    )
    name = (
        f"- Moonshot (≤ {target_bytes} B/image at pooled PSNR ≥ {target_psnr} dB, the reference's WebP quality 5 "
        f"anchor in about a quarter of its bytes{measured})"
    )
    points = table[table.kind == "variant"].dropna(subset=["psnr_pooled"])
    small = points[points.bytes_per_image <= target_bytes]
    if small.empty:
        head = f"{name}: not met; no variant stores an image in ≤ {target_bytes} bytes"
        if not len(points):
            return head + "."
        n = points.loc[points.bytes_per_image.idxmin()]
        return (
            f"{head} (the smallest point is {n.method} {n.setting} at {n.bytes_per_image:.2f} B/image, "
            f"{n.psnr_pooled:.2f} dB pooled)."
        )
    best = small.loc[small.psnr_pooled.idxmax()]
    verdict = "met" if best.psnr_pooled >= target_psnr else f"not met ({target_psnr - best.psnr_pooled:.2f} dB short)"
    return (
        f"{name}: {verdict}; the best variant point within {target_bytes} bytes is {best.method} {best.setting} at "
        f"{best.bytes_per_image:.1f} B/image, {best.psnr_pooled:.2f} dB pooled, SSIM {best.ssim:.4f}."
    )


def quality_target_findings(means: pd.DataFrame, budget_flops: int) -> list[str]:
    """The 32-number latent target, answered from the numbers for the encoder's single pass and, where some
    variant was evaluated with codec.refine_steps > 0, for the codec's refined latents."""
    refined = means[means.refine_steps > 0] if "refine_steps" in means else means.iloc[:0]
    return [_quality_target_finding(means, budget_flops, "")] + (
        [_quality_target_finding(refined, budget_flops, "_refined")] if len(refined) else []
    )


def _quality_target_finding(means: pd.DataFrame, budget_flops: int, suffix: str) -> str:
    """The best variant with a 32-dim latent within model01's training FLOPs per image against 27.0 dB per-image PSNR
    and SSIM 0.985 (of the reconstructions named by suffix): by PSNR among those that meet both, else among all."""
    t = QUALITY_TARGET
    psnr_key, ssim_key = f"psnr{suffix}", f"ssim{suffix}"
    eligible = means[(means.latent_dim == t["latent_dim"]) & (means.train_flops_per_image <= budget_flops)]
    unknown = eligible[eligible[[psnr_key, ssim_key]].isna().any(axis=1)].index
    eligible = eligible.drop(unknown)
    how = "with the codec's encode-time latent refinement" if suffix else "in one encoder pass"
    head = (
        f"- Quality target {how} ({t['latent_dim']}-number latent, ≤ {budget_flops / 1e6:.0f} MFLOP per training "
        f"image like model01: per-image PSNR ≥ {t['psnr']} dB and SSIM ≥ {t['ssim']})"
    )
    missing = f" (not counted, a seed lacking the value: {', '.join(unknown)})" if len(unknown) else ""
    if eligible.empty and len(unknown):
        return (
            f"{head}: no variant with a {t['latent_dim']}-dim latent within that budget has its values from every "
            f"seed ({', '.join(unknown)})."
        )
    if eligible.empty:
        return f"{head}: no variant here has a {t['latent_dim']}-dim latent within that budget."
    meeting = eligible[(eligible[psnr_key] >= t["psnr"]) & (eligible[ssim_key] >= t["ssim"])]
    candidates = meeting if len(meeting) else eligible  # a variant that meets both beats one with a higher PSNR alone
    best = candidates.loc[candidates[psnr_key].idxmax()]
    psnr, ssim = best[psnr_key], best[ssim_key]
    shortfalls = [f"{t['psnr'] - psnr:.2f} dB"] if psnr < t["psnr"] else []
    shortfalls += [f"{t['ssim'] - ssim:.4f} SSIM"] if ssim < t["ssim"] else []
    verdict = f"not met ({', '.join(shortfalls)} short)" if shortfalls else "met"
    steps = f", up to {int(best.refine_steps)} refinement steps per image" if suffix else ""
    return (
        f"{head}: {verdict}; the best is {best.name} at {psnr:.2f} dB, SSIM {ssim:.4f}, "
        f"{best.train_flops_per_image / 1e6:.0f} MFLOP per training image{steps}{missing}."
    )
