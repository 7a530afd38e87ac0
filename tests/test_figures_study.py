"""The report's runs against the study's published weights (pipeline.lib.figures_study.against_published): each
seed's test MSE over its study model's published weights', beside the other groups' variants at the same layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex

from pipeline.lib import figures_study, plotting
from tests.figures_support import draw_all, make_published, make_results, spec

# two decoder families of two layers each (m1/m2 and their _linear twins) and a variant alone at its own layer
SPECS = {
    "m1": spec([1, 1, 2, 1]),
    "m2": spec([2, 1, 1, 1]),
    "m1_linear": spec([1, 1, 2, 1], "linear"),
    "m2_linear": spec([2, 1, 1, 1], "linear"),
    "solo": spec([1, 2, 1, 1], "tanh"),
}
MSES = {
    "m1": [0.004, 0.0044, 0.0046],
    "m2": [0.003, 0.0031],
    "m1_linear": [0.0031, 0.0032, 0.0030],
    "m2_linear": [0.0029, 0.0030],
    "solo": [0.005, 0.0052],
}
PUBLISHED = {"m1": 0.004, "m2": 0.010, "m9": 0.002}  # m9: published, but not in the matrix
DEAD = [4, 18, 7]


def published(values: dict = PUBLISHED) -> pd.DataFrame:
    return make_published(values).assign(dead_latent_units=DEAD[: len(values)])


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as monkeypatch:
        path = tmp_path_factory.mktemp("study")
        return draw_all(monkeypatch, path, make_results(MSES), published(), specs=SPECS)


def dots(ax) -> list[PathCollection]:
    return [c for c in ax.collections if len(c.get_offsets())]


def test_each_seed_is_its_mse_over_the_published_weights_beside_its_twin_at_the_same_layer(drawn):
    (ax,) = drawn["against_published"].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m1 (layer 3)", "m2 (layer 1)"]  # not m9: not run
    colours = plotting.variant_colours(list(SPECS), SPECS)
    markers = {}
    for variant, model in [("m1", "m1"), ("m1_linear", "m1"), ("m2", "m2"), ("m2_linear", "m2")]:
        (points,) = [c for c in dots(ax) if to_hex(c.get_facecolor()[0]) == to_hex(colours[variant])]
        x, y = points.get_offsets().T
        np.testing.assert_allclose(sorted(y), sorted(np.array(MSES[variant]) / PUBLISHED[model]))
        slot = -0.2 if variant == model else 0.2  # two groups at the layer: 0.8 wide, halves centred at ±0.2
        assert x.mean() == pytest.approx(["m1", "m2"].index(model) + slot)
        markers[variant] = points.get_paths()[0].vertices.tobytes()
    assert markers["m1"] == markers["m2"] != markers["m1_linear"] == markers["m2_linear"]  # a marker per group
    assert len(dots(ax)) == 4  # solo upsamples at a layer of no study model


def test_the_lines_the_ranges_and_the_published_dead_units_are_marked_on_an_axis_from_zero(drawn):
    (ax,) = drawn["against_published"].axes
    assert sorted(line.get_ydata()[0] for line in ax.lines) == pytest.approx([1.0, 1.15])
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 1.15 * 1.1
    assert [t.get_text() for t in ax.texts] == ["1.000–1.150×", "4 dead", "0.300–0.310×", "18 dead"]
    legend = [t.get_text() for t in drawn["against_published"].legends[0].get_texts()]
    assert "latent relu, init glorot_uniform" in legend and "latent linear, init glorot_uniform" in legend


def test_one_seed_sits_in_the_middle_of_its_slot_and_a_model_without_a_published_mse_is_left_out(monkeypatch, tmp_path):
    results = make_results({v: MSES[v][:1] for v in ("m1", "m1_linear", "m2")})
    weights = published({"m1": 0.004, "m2": np.nan})
    (ax,) = draw_all(monkeypatch, tmp_path, results, weights, specs=SPECS)["against_published"].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m1 (layer 3)"]
    assert sorted(c.get_offsets()[0, 0] for c in dots(ax)) == pytest.approx([-0.2, 0.2])
    assert [t.get_text() for t in ax.texts] == ["1.000×", "4 dead"]


def test_the_other_figures_draw_each_variant_in_its_paired_colour(drawn):
    colours = {v: to_hex(c) for v, c in plotting.variant_colours(list(SPECS), SPECS).items()}
    labels = plotting.layer_labels(list(SPECS), SPECS)  # the curves are named as on the other figures
    curves = {line.get_label(): to_hex(line.get_color()) for line in drawn["loss_curves"].axes[0].lines}
    assert {v: curves[labels.get(v, v)] for v in SPECS} == colours
    assert "m1 (layer 3)" in curves and "solo" in curves
    markers = {line.get_label(): line.get_marker() for line in drawn["loss_curves"].axes[0].lines}
    assert [markers[labels.get(v, v)] for v in SPECS] == ["o", "o", "s", "s", "o"]  # the twins' own marker; solo none
    psnr = drawn["findings_seed_spread"].axes[0]
    assert [to_hex(c.get_facecolor()[0]) for c in psnr.collections if isinstance(c, PathCollection)] == list(
        colours.values()
    )
    bars, below = drawn["per_class_psnr"].axes
    assert [to_hex(c.patches[0].get_facecolor()) for c in bars.containers] == list(colours.values())
    assert [to_hex(c.get_facecolor()[0]) for c in below.collections] == list(colours.values())


def test_without_published_weights_the_figure_says_so(monkeypatch, tmp_path):
    fig = draw_all(monkeypatch, tmp_path, make_results(MSES), pd.DataFrame(columns=["variant"]), specs=SPECS)
    (ax,) = fig["against_published"].axes
    assert [t.get_text() for t in ax.texts] == ["no study model of this matrix has published weights measured"]


def test_a_model_in_no_group_stands_alone_at_its_tick():
    assert figures_study._same_layer("m1", [], SPECS) == [(0, "m1")]
    groups = [["m1", "m2"], ["m1_linear", "m2_linear"]]
    assert figures_study._same_layer("m2", groups, SPECS) == [(0, "m2"), (1, "m2_linear")]


def test_each_run_is_a_dot_at_its_dead_units_and_mse_beside_the_published_weights_as_named_stars(drawn):
    (ax,) = drawn["dead_units"].axes
    results = make_results(MSES)
    colours = plotting.variant_colours(list(SPECS), SPECS)
    *runs, stars = ax.collections
    for points, variant in zip(runs, MSES):
        x, y = points.get_offsets().T
        assert to_hex(points.get_facecolor()[0]) == to_hex(colours[variant])
        np.testing.assert_allclose(y, MSES[variant])
        dead = results.loc[results.variant == variant, "dead_latent_units"].to_numpy()
        assert np.abs(x - dead).max() <= 0.2 and len(set(np.round(x - dead, 9))) == 1  # whole counts, side by side
    np.testing.assert_allclose(stars.get_offsets(), [[4, 0.004], [18, 0.010], [7, 0.002]])
    assert sorted(t.get_text() for t in ax.texts) == ["m1", "m2", "m9"]
    assert ax.get_ylim()[0] == 0
    legend = [t.get_text() for t in drawn["dead_units"].legends[0].get_texts()]
    assert legend[:2] == ["m1 (layer 3)", "m2 (layer 1)"] and "solo" in legend  # named as on the other figures


def test_published_models_with_the_same_dead_units_share_one_label(monkeypatch, tmp_path):
    saved = []
    monkeypatch.setattr(plotting, "save", lambda fig, out, **kwargs: saved.append(fig))
    weights = pd.DataFrame({"mse": [0.004, 0.0041, 0.005], "dead_latent_units": [4, 4, 8]}, index=["m1", "m3", "m4"])
    runs = make_results({"m1": [0.004]})
    figures_study.dead_units(runs, weights, tmp_path / "dead.png", {"m1": "black"}, {"m1": "o"})
    (ax,) = saved[0].axes
    assert sorted(t.get_text() for t in ax.texts) == ["m1, m3", "m4"]


@pytest.mark.parametrize(("published_difference", "bars"), [(0.0, "one"), (1e-7, "two")])
def test_where_both_passes_agree_to_the_bit_one_bar_says_so_instead_of_two_alike(
    monkeypatch, tmp_path, published_difference, bars
):
    runs = make_results({"a": [0.004, 0.005], "b": [0.003, 0.0031]}).assign(max_abs_diff_decoder=0.0)
    for metric in ("mse", "ssim", "psnr"):
        runs[f"{metric}_decoder"] = runs[metric]
    published = make_published({"a": 0.0035}).assign(max_abs_diff_decoder=published_difference)
    drawn = draw_all(monkeypatch, tmp_path, runs, published)["study_comparison"]
    labels = [[c.get_label() for c in ax.containers] for ax in drawn.axes[:4]]
    tested = [figures_study.SAME_TO_THE_BIT] if bars == "one" else ["autoencoder", "encoder→decoder"]
    assert labels == [["train_loss", "val_loss"], tested, tested, tested]  # one decision for the three panels
