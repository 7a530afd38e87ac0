"""The report's tables beside the study and of compression: ours against the study's reported numbers and published
weights, run by run against those weights, on the study's protocol images, the streams' sizes, and the recipes the
variants trained with; and how a table prints in markdown."""

from __future__ import annotations

import pandas as pd

from pipeline.lib.report_findings import counted

# A run of a study model matches the study when its test MSE is at most this fraction above its published weights'
PUBLISHED_WEIGHTS_BAND = 0.15
STUDY_COLUMNS = ["train_loss", "val_loss", "mse", "ssim", "psnr", "psnr_pooled"]
COMPRESSION_COLUMNS = [
    "latent_dim",
    "train_flops_per_image",  # what a position costs: the quality target's budget is model01's
    "bytes_per_image_float32",
    "bytes_per_image_uint8",
    "bytes_per_image_uint8_range",
    "psnr_pooled_uint8",
    "bytes_per_image_entropy",
    "prior_bits_per_image",
    "max_abs_diff_decoder",
    "eval_seconds",
    "refine_steps",
    "refine_seconds",
    "psnr_refined",
    "ssim_refined",
    "psnr_pooled_refined",
]


def study_table(means: pd.DataFrame, n_seeds: int, reference: dict, study: pd.DataFrame) -> pd.DataFrame:
    """Ours (full test set, mean over seeds) beside the study's reported numbers and its published weights as the
    study stage measured them (`study`: their metrics, indexed by variant)."""
    rows = []
    for variant, ours in means.iterrows():
        rows.append(
            {
                "variant": variant,
                "source": f"CompressNet ({int(ours.epochs)} ep, {counted(n_seeds, 'seed')}, {int(ours.n_test)} img)",
                **{c: ours[c] for c in [*STUDY_COLUMNS, "dead_latent_units"]},
            }
        )
        if variant in reference["reported"]:
            rows.append({"variant": variant, "source": "study, reported (10 img)", **reference["reported"][variant]})
        if variant in study.index:
            published = study.loc[variant]
            rows.append(
                {
                    "variant": variant,
                    "source": f"study, published weights ({int(published.n_test)} img)",
                    **{c: published[c] for c in [*STUDY_COLUMNS, "dead_latent_units"]},
                    # the study's logged losses (its reported row), not measured here on these images
                    "train_loss": None,
                    "val_loss": None,
                }
            )
    return pd.DataFrame(rows).set_index(["variant", "source"])


def published_weights_check(results: pd.DataFrame, study: pd.DataFrame, band: float) -> pd.DataFrame:
    """Each run of a study model beside that model's published weights (as the study stage measured them): its test
    MSE over theirs, whether it is at most `band` above it, and both dead-unit counts (the study's confounder)."""
    runs = results[results.variant.isin(study.index)]
    published = study.reindex(index=runs.variant, columns=["mse", "dead_latent_units"])  # columns: none if no models
    ratio = runs.mse.to_numpy() / published.mse.to_numpy()
    return pd.DataFrame(
        {
            "variant": runs.variant,
            "seed": runs.seed,
            "epochs": runs.epochs,
            "mse": runs.mse,
            "mse_published": published.mse.to_numpy(),
            "ratio": ratio,
            f"at_most_{band:.0%}_above": ratio <= 1 + band,
            "dead_latent_units": runs.dead_latent_units,
            "dead_latent_units_published": published.dead_latent_units.to_numpy(),
        }
    )


def protocol_table(results: pd.DataFrame, study: pd.DataFrame) -> pd.DataFrame:
    """The study's protocol (its seeded test images) per run, each study model's runs followed by its published
    weights on the same images (`study`: by variant), the comparison the study's own table makes."""
    frames = []
    for variant, runs in results.groupby("variant", sort=False):
        frames.append(pd.DataFrame(list(runs.seed_protocol), index=runs.index))
        if isinstance(study.get("seed_protocol", {}).get(variant), dict):
            frames.append(pd.DataFrame([study.seed_protocol[variant]], index=[f"{variant} published weights"]))
    return pd.concat(frames)[["mse", "psnr", "psnr_pooled", "ssim"]]


def protocol_offset(results: pd.DataFrame) -> str:
    """How far each run's per-image PSNR on the protocol's few images differs from its own on the whole test split:
    a sentence for under the protocol table, so that its numbers are not set beside the whole split's."""
    offset = results.seed_protocol.map(lambda protocol: protocol["psnr"]) - results.psnr
    images = len(results.seed_protocol.iloc[0]["indices"])
    return (
        f"On these {images} images a run's per-image PSNR differs from its whole test split's by {offset.min():+.2f} "
        f"to {offset.max():+.2f} dB (mean {offset.mean():+.2f} dB): compare them with each other and with the study's "
        "own table, not with the whole split's numbers."
    )


def compression_table(means: pd.DataFrame) -> pd.DataFrame:
    """COMPRESSION_COLUMNS that some variant fills: no entropy-coding columns without an entropy-coded variant, no
    refinement columns where no variant refines."""
    table = means.reindex(columns=COMPRESSION_COLUMNS).dropna(axis="columns", how="all")
    if (table.get("refine_steps", pd.Series(0.0)).fillna(0) == 0).all():
        table = table.drop(columns=[c for c in table if "refine" in c])
    return table


# the train: keys that make a recipe (the others say where and how fast it runs, not what it computes)
RECIPE_KEYS = [
    "epochs",
    "steps_per_epoch",
    "batch_size",
    "optimizer",
    "lr",
    "adam_eps",
    "schedule",
    "weight_decay",
    "loss",
    "precision",
]


def recipe_table(recipes: dict[str, dict]) -> pd.DataFrame:
    """A row per distinct training recipe (each variant's train: with its overrides), naming the variants using it."""
    shared: dict[tuple, list[str]] = {}
    for variant, recipe in recipes.items():
        shared.setdefault(tuple(recipe[key] for key in RECIPE_KEYS), []).append(variant)
    rows = [{"variants": ", ".join(variants), **dict(zip(RECIPE_KEYS, key))} for key, variants in shared.items()]
    return pd.DataFrame(rows, columns=["variants", *RECIPE_KEYS])


def markdown_table(table: pd.DataFrame, index: bool = True, **tabulate) -> str:
    """The table in markdown, a missing value as "–"."""
    blanked = table.astype(object).where(table.notna(), None)  # tabulate shows None as missingval
    return blanked.to_markdown(index=index, floatfmt=".5g", missingval="–", **tabulate)


def markdown_varying(table: pd.DataFrame, index: bool = True) -> str:
    """The table without the columns that hold one value in every row (but the variant and seed that name a row),
    those values said once below it; a table of one row as it is."""
    constant = [
        c
        for c in table.columns
        if c not in ("variant", "seed") and len(table) > 1 and table[c].nunique(dropna=False) == 1
    ]
    if not constant:
        return markdown_table(table, index)
    values = "; ".join(f"{column} {_cell(table[column].iloc[0])}" for column in constant)  # each its own dtype
    return f"{markdown_table(table.drop(columns=constant), index)}\n\nIn every row: {values}."


def _cell(value: object) -> str:
    """A value as `markdown_table` shows it in a cell."""
    if pd.isna(value):
        return "–"
    return f"{value:.5g}" if isinstance(value, float) else str(value)
