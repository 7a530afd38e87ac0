"""What the figure tests share: small synthetic results as the report stage passes them, and every figure drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.lib import figures, plotting, rate_distortion, report_text, stats

CHARS = list("0aB")
STUDY_METRICS = ["train_loss", "val_loss", "mse", "mse_decoder", "ssim", "ssim_decoder", "psnr", "psnr_decoder"]


def make_results(values: dict[str, list[float]]) -> pd.DataFrame:
    """One row per (variant, seed): `values` gives each variant's MSE per seed; the other metrics follow from it."""
    rows = {}
    for variant, mses in values.items():
        for seed, mse in enumerate(mses):
            psnr = 10 * np.log10(1 / mse)
            rows[f"{variant}-seed{seed}"] = {
                "variant": variant,
                "seed": seed,
                "train_loss": mse * 0.9,
                "val_loss": mse * 1.01,
                "mse": mse,
                "mse_decoder": mse * 1.02,
                "psnr": psnr,
                "psnr_decoder": psnr - 0.05,
                "psnr_pooled": psnr - 0.1,
                "ssim": 1 - 10 * mse,
                "ssim_decoder": 1 - 10.2 * mse,
                "max_abs_diff_decoder": 0.004,  # the two passes differ: two bars
                "dead_latent_units": float(seed % 2),
                "effective_latent_dims": 20.0,
                "latent_dim": 32,
                "bytes_per_image_uint8": 36.0,
                "psnr_pooled_uint8": psnr - 0.2,
                "psnr_uint8": psnr - 0.1,
                "ssim_uint8": 1 - 11 * mse,
                "mse_uint8": mse * 1.05,
                "per_class": [{"char": c, "psnr": psnr + i} for i, c in enumerate(CHARS)],
            }
    return pd.DataFrame.from_dict(rows, orient="index")


def make_published(values: dict[str, float]) -> pd.DataFrame:
    """The study stage's table of published weights: a row per model with its variant; given here by MSE."""
    if not values:
        return pd.DataFrame(columns=["variant"])
    return make_results({variant: [mse] for variant, mse in values.items()}).assign(seed=-1)


NO_PUBLISHED = make_published({})


def draw_all(
    monkeypatch,
    tmp_path,
    results: pd.DataFrame,
    published: pd.DataFrame = NO_PUBLISHED,
    keras_log: dict | None = None,
    specs: dict | None = None,
) -> dict:
    """Every figure of the report, by name, drawn (so tick labels and offset texts are final)."""
    drawn = {}
    save = plotting.save

    def keep(fig, out, **kwargs):
        save(fig, out, **kwargs)
        drawn[out.stem] = fig  # closed, but it can still be drawn and inspected

    monkeypatch.setattr(plotting, "save", keep)
    means = report_text.variant_means(results)
    baseline = {"method": "jpeg", "setting": "quality 5", "bytes_per_image": 130.0, "psnr_pooled": 27.1, "ssim": 0.9}
    histories = {
        v: [pd.DataFrame({"epoch": [1, 2], "train_loss": [r.mse * 2, r.mse], "val_loss": [r.mse * 2, r.mse]})]
        for v, r in means.iterrows()
    }
    originals = np.zeros((3, 28, 28), np.uint8)
    samples = {name: originals for name in results.groupby("variant", sort=False).head(1).index}
    figures.report_figures(
        results,
        stats.aggregate(results, report_text.SEED_COLUMNS, report_text.SEED_FLOORS, report_text.SEED_CEILINGS),
        means,
        rate_distortion.assemble(means, [baseline]),
        histories,
        originals,
        samples,
        published,
        keras_log or {},
        tmp_path,
        specs,
    )
    assert sorted(drawn) == sorted(figures.REPORT_FIGURES)
    assert all((tmp_path / f"{name}.png").stat().st_size > 0 for name in drawn)
    for fig in drawn.values():
        fig.canvas.draw()
    return drawn


def spec(strides: list[int], latent: str = "relu") -> dict:
    """A variant's spec as the report passes it: variants alike but for their strides make a decoder family."""
    return {"decoder_strides": strides, "latent_activation": latent, "init": "glorot_uniform", "description": ""}
