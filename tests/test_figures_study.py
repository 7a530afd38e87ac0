"""The report's runs against the study's published weights (pipeline.lib.figures_study.against_published), and the
colours that pair the variants of decoder families upsampling at the same layer (pipeline.lib.plotting)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex

from pipeline.lib import plotting
from tests.figures_support import draw_all, make_published, make_results, spec

# two decoder families of two layers each (m1/m2 and their _linear twins) and a variant in no family
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
PUBLISHED = {"m1": 0.004, "m2": 0.010}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as monkeypatch:
        path = tmp_path_factory.mktemp("study")
        return draw_all(monkeypatch, path, make_results(MSES), make_published(PUBLISHED), specs=SPECS)


def hexes(colours) -> list[str]:
    return [to_hex(c) for c in colours]


def test_variants_at_the_same_layer_share_a_hue_in_their_familys_shade():
    colours = {v: to_hex(c) for v, c in plotting.variant_colours(list(SPECS), SPECS).items()}
    assert len(set(colours.values())) == len(SPECS)
    shades = plotting.SHADES
    tab20c = hexes(plotting.plt.get_cmap("tab20c").colors)
    hue = {v: tab20c.index(colours[v]) // shades for v in ("m1", "m2", "m1_linear", "m2_linear")}
    assert hue["m1"] == hue["m1_linear"] != hue["m2"] == hue["m2_linear"]
    assert tab20c.index(colours["m1"]) < tab20c.index(colours["m1_linear"])  # the first family the darker
    assert colours["solo"] not in tab20c


def test_beyond_four_families_each_variant_takes_a_distinct_colour():
    specs = {
        f"f{f}l{layer}": spec([2 if i == layer else 1 for i in range(4)], f"act{f}")
        for f in range(5)
        for layer in range(2)
    }
    colours = plotting.variant_colours(list(specs), specs)
    assert hexes(colours.values()) == hexes(plotting.palette(len(specs)))


def test_without_specs_the_colours_are_the_palettes():
    colours = plotting.variant_colours(["a", "b", "c"], {})
    assert list(colours) == ["a", "b", "c"] and len(set(hexes(colours.values()))) == 3


def test_each_seed_is_its_mse_over_the_published_weights_beside_its_twin_at_the_same_layer(drawn):
    fig = drawn["against_published"]
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m1 (layer 3)", "m2 (layer 1)"]
    points = [c for c in ax.collections if len(c.get_offsets())]
    colours = plotting.variant_colours(list(SPECS), SPECS)
    for variant, model in [("m1", "m1"), ("m1_linear", "m1"), ("m2", "m2"), ("m2_linear", "m2")]:
        (dots,) = [c for c in points if to_hex(c.get_facecolor()[0]) == to_hex(colours[variant])]
        np.testing.assert_allclose(sorted(dots.get_offsets()[:, 1]), sorted(np.array(MSES[variant]) / PUBLISHED[model]))
        assert abs(dots.get_offsets()[:, 0].mean() - ["m1", "m2"].index(model)) < 0.5  # in its model's slot
    assert not [c for c in points if to_hex(c.get_facecolor()[0]) == to_hex(colours["solo"])]  # no published weights


def test_the_published_weights_and_the_band_above_them_are_lines_from_a_zero_axis(drawn):
    (ax,) = drawn["against_published"].axes
    levels = sorted(line.get_ydata()[0] for line in ax.lines)
    assert levels == pytest.approx([1.0, 1.15])
    assert ax.get_ylim()[0] == 0
    assert [t.get_text() for t in ax.texts] == ["0 dead", "0 dead"]  # make_published's weights have none
    legend = [t.get_text() for t in drawn["against_published"].legends[0].get_texts()]
    assert "latent relu, init glorot_uniform" in legend and "latent linear, init glorot_uniform" in legend


def test_the_other_figures_draw_each_variant_in_its_paired_colour(drawn):
    colours = {v: to_hex(c) for v, c in plotting.variant_colours(list(SPECS), SPECS).items()}
    curves = {line.get_label(): to_hex(line.get_color()) for line in drawn["loss_curves"].axes[0].lines}
    assert {v: curves[v] for v in SPECS} == colours
    psnr = drawn["findings_seed_spread"].axes[0]
    dots = [to_hex(c.get_facecolor()[0]) for c in psnr.collections if isinstance(c, PathCollection)]
    assert dots == list(colours.values())
    bars, below = drawn["per_class_psnr"].axes
    assert [to_hex(c.patches[0].get_facecolor()) for c in bars.containers] == list(colours.values())
    assert [to_hex(c.get_facecolor()[0]) for c in below.collections] == list(colours.values())


def test_without_published_weights_the_figure_says_so(monkeypatch, tmp_path):
    fig = draw_all(monkeypatch, tmp_path, make_results(MSES), pd.DataFrame(columns=["variant"]), specs=SPECS)
    (ax,) = fig["against_published"].axes
    assert [t.get_text() for t in ax.texts] == ["no study model of this matrix has published weights measured"]
