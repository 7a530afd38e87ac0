"""The report's figures (pipeline.lib.figures) read at a glance: bars from zero, each seed a dot on its mean's bar,
no offset or scientific multiplier on any axis. Built from small synthetic results, as the report stage passes them."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer

from pipeline.lib import plotting
from tests.figures_support import STUDY_METRICS, draw_all, make_published, make_results, spec


def bar_axes(fig) -> list:
    return [ax for ax in fig.axes if any(isinstance(c, BarContainer) for c in ax.containers)]


def dots_on(ax, bar) -> np.ndarray:
    """The y of every seed dot drawn within the bar's width."""
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    inside = (points[:, 0] >= bar.get_x()) & (points[:, 0] <= bar.get_x() + bar.get_width())
    return points[inside, 1]


# one variant whose seeds agree to 1e-12: the case that drew "1e-10 + 2.940203e-3" on the study comparison's axes
ONE_VARIANT = {"model01": [0.002940203, 0.002940203 + 1e-12]}
THREE_VARIANTS = {"a": [0.004, 0.0042, 0.0041], "b": [0.003, 0.0031, 0.0029], "c": [0.006, 0.0058, 0.0061]}


@pytest.mark.parametrize("values", [ONE_VARIANT, THREE_VARIANTS], ids=["one-variant", "three-variants"])
def test_no_axis_has_an_offset_or_a_multiplier(monkeypatch, tmp_path, values):
    for name, fig in draw_all(monkeypatch, tmp_path, make_results(values)).items():
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                assert axis.get_offset_text().get_text() == "", f"{name}: {ax.get_title()!r}"


@pytest.mark.parametrize("values", [ONE_VARIANT, THREE_VARIANTS], ids=["one-variant", "three-variants"])
def test_bars_start_at_zero(monkeypatch, tmp_path, values):
    drawn = draw_all(monkeypatch, tmp_path, make_results(values))
    assert len(bar_axes(drawn["study_comparison"])) == 4 and len(bar_axes(drawn["per_class_psnr"])) == 1
    for fig in drawn.values():
        for ax in bar_axes(fig):
            assert ax.get_ylim()[0] == 0
            assert all(bar.get_height() <= ax.get_ylim()[1] for bar in ax.patches if hasattr(bar, "get_height"))


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> dict:
    """THREE_VARIANTS' figures with nothing published, drawn once for the tests that only read them."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return draw_all(monkeypatch, tmp_path_factory.mktemp("three"), make_results(THREE_VARIANTS))


def test_each_seed_is_a_dot_on_its_variants_mean_bar(three):
    results = make_results(THREE_VARIANTS)
    fig = three["study_comparison"]
    variants = list(THREE_VARIANTS)
    for ax in fig.axes:
        assert sum(len(c.get_offsets()) for c in ax.collections) == 2 * len(results)  # two bars per variant
        for container in ax.containers:
            metric = {
                "autoencoder": ax.get_title().split()[-1].lower(),
                "encoder→decoder": ax.get_title().split()[-1].lower() + "_decoder",
            }.get(container.get_label(), container.get_label())
            assert metric in STUDY_METRICS
            for variant, bar in zip(variants, container.patches):
                seeds = results.loc[results.variant == variant, metric].to_numpy()
                np.testing.assert_allclose(sorted(dots_on(ax, bar)), sorted(seeds))
                assert bar.get_height() == pytest.approx(seeds.mean())
        assert [t.get_text() for t in ax.get_xticklabels()] == variants
    assert "each seed" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_published_weights_are_a_line_across_their_models_bars(monkeypatch, tmp_path):
    results = make_results(THREE_VARIANTS)
    published = make_published({"b": 0.0035})  # a study model; "a" and "c" have no published weights
    fig = draw_all(monkeypatch, tmp_path, results, published)["study_comparison"]
    for ax in fig.axes:
        assert len(ax.containers) == 2 and len(ax.lines) == 2  # one line per bar of "b", none for "a" or "c"
        for container, line in zip(ax.containers, ax.lines):
            metric = next(c for c in STUDY_METRICS if results[c].mean() == pytest.approx(container.datavalues.mean()))
            bar = container.patches[1]
            np.testing.assert_allclose(line.get_xdata(), [bar.get_x(), bar.get_x() + bar.get_width()])
            np.testing.assert_allclose(line.get_ydata(), [published.set_index("variant").loc["b", metric]] * 2)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "published weights" in labels and "the study's Keras log (its val set is its test set)" in labels


def test_the_study_comparison_has_one_legend_below_its_panels_and_no_headroom_beyond_the_data(monkeypatch, tmp_path):
    """Bars of SSIM (about 1) fill their panel: a legend inside would cover them, and room made for one would take
    SSIM's axis past 1."""
    published = make_published({"b": 0.0035})
    fig = draw_all(monkeypatch, tmp_path, make_results(THREE_VARIANTS), published)["study_comparison"]
    (legend,) = fig.legends
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert all(legend.get_window_extent().y1 <= ax.get_window_extent().y0 for ax in fig.axes)
    ssim = next(ax for ax in fig.axes if ax.get_title() == "test SSIM")
    assert ssim.get_ylim()[1] < 1.1
    assert [ax.get_title() for ax in fig.axes][-1] == "test per-image mean PSNR"


def test_the_per_class_legend_sits_beside_the_bars_whose_right_end_reaches_the_top(three):
    fig = three["per_class_psnr"]
    fig.canvas.draw()
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(THREE_VARIANTS)
    assert all(legend.get_window_extent().x0 >= ax.get_window_extent().x1 for ax in fig.axes)


def test_under_each_per_class_bar_a_dot_is_its_difference_from_the_best_variant(three):
    bars, below = three["per_class_psnr"].axes
    results = make_results(THREE_VARIANTS)
    per_class = {v: [r[0]["psnr"] for r in group.per_class] for v, group in results.groupby("variant")}
    best = np.mean(per_class["b"])  # b has the lowest MSE; character "0" (psnr + 0) is its hardest, first
    for container, dots in zip(bars.containers, below.collections):
        bar = container.patches[0]
        (x, y) = dots.get_offsets()[0]
        assert bar.get_x() <= x <= bar.get_x() + bar.get_width()
        assert y == pytest.approx(bar.get_height() - best)
    assert [np.mean(per_class[v]) for v in THREE_VARIANTS] == pytest.approx(
        [c.patches[0].get_height() for c in bars.containers]
    )


def test_the_rate_distortion_legend_sits_below_both_panels(three):
    fig = three["rate_distortion"]
    fig.canvas.draw()
    (legend,) = fig.legends
    assert "jpeg" in [t.get_text() for t in legend.get_texts()]
    assert all(legend.get_window_extent().y1 <= ax.get_window_extent().y0 for ax in fig.axes)


def test_the_seed_spread_figure_has_a_dot_per_seed(three):
    fig = three["findings_seed_spread"]
    for ax in fig.axes:
        assert [len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)] == [3, 3, 3]


@pytest.mark.parametrize("seeds", [1, 3])
def test_the_seed_spread_figure_puts_each_seed_beside_its_mean_not_on_it(monkeypatch, tmp_path, seeds):
    results = make_results({variant: mses[:seeds] for variant, mses in THREE_VARIANTS.items()})
    for ax in draw_all(monkeypatch, tmp_path, results)["findings_seed_spread"].axes:
        (errorbar,) = ax.containers
        means_x = errorbar.lines[0].get_xdata()
        dots = [c.get_offsets()[:, 0] for c in ax.collections if isinstance(c, PathCollection)]
        assert [len(x) for x in dots] == [seeds] * len(THREE_VARIANTS)
        for tick, dots_x in enumerate(dots):
            assert tick - 0.5 < means_x[tick] < tick  # the mean left of its tick, in the variant's own slot
            assert dots_x.min() > means_x[tick] + 0.1  # the seeds clear of the mean's marker, to its right
            assert dots_x.max() < tick + 0.5  # and in the same slot


def test_the_interval_of_a_count_stops_at_zero(three):
    *_, dead = three["findings_seed_spread"].axes  # dead units 0, 1, 0: a t-interval of the mean from -1.1 to 1.8
    (errorbar,) = dead.containers
    lows = [segment[:, 1].min() for segment in errorbar.lines[2][0].get_segments()]
    assert lows == pytest.approx([0.0] * len(THREE_VARIANTS))
    highs = [segment[:, 1].max() for segment in errorbar.lines[2][0].get_segments()]
    assert highs == pytest.approx([1 / 3 + 4.30265 * np.sqrt(1 / 3) / np.sqrt(3)] * len(THREE_VARIANTS), rel=1e-5)


def test_seeds_that_agree_are_not_magnified_into_a_spread(monkeypatch, tmp_path):
    fig = draw_all(monkeypatch, tmp_path, make_results(ONE_VARIANT))["findings_seed_spread"]
    psnr, ssim, _ = fig.axes
    for ax in (psnr, ssim):
        low, high = ax.get_ylim()
        assert high - low >= 0.0099 * (low + high) / 2  # about 1% of the value, where the seeds differ by 1e-9


def test_the_studys_keras_log_is_drawn_beside_its_models_curves_in_its_colour(monkeypatch, tmp_path):
    logged = {"train_loss": {1: 0.02, 5: 0.005, 14: 0.004}, "val_loss": {1: 0.008, 5: 0.006, 14: 0.005}}
    fig = draw_all(monkeypatch, tmp_path, make_results(THREE_VARIANTS), keras_log={"b": logged})["loss_curves"]
    for ax, column in zip(fig.axes, ("train_loss", "val_loss")):
        ours = {line.get_label(): line for line in ax.lines if line.get_marker() == "o"}
        (study,) = [line for line in ax.lines if line.get_marker() == "x" and len(line.get_xdata())]
        assert sorted(ours) == ["a", "b", "c"]
        assert study.get_color() == ours["b"].get_color()
        np.testing.assert_allclose(study.get_xdata(), [1, 5, 14])
        np.testing.assert_allclose(study.get_ydata(), list(logged[column].values()))
    (legend,) = fig.legends
    assert any(t.get_text().startswith("the study's Keras log") for t in legend.get_texts())


def test_without_a_study_model_no_keras_log_is_drawn(monkeypatch, tmp_path):
    logged = {"train_loss": {1: 0.02}, "val_loss": {1: 0.008}}
    fig = draw_all(monkeypatch, tmp_path, make_results(THREE_VARIANTS), keras_log={"model01": logged})["loss_curves"]
    for ax in fig.axes:
        assert [line.get_marker() for line in ax.lines] == ["o", "o", "o"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c"]


def test_many_variants_keep_a_colour_each_and_a_legend(monkeypatch, tmp_path):
    many = {f"v{i:02d}": [0.003 + 1e-4 * i, 0.0031 + 1e-4 * i] for i in range(13)}  # above the default cycle's 10
    drawn = draw_all(monkeypatch, tmp_path, make_results(many))
    curves = drawn["loss_curves"].axes[0]
    colours = {line.get_label(): line.get_color() for line in curves.lines}
    assert len(colours) == 13 and len(set(map(str, colours.values()))) == 13
    (legend,) = drawn["per_class_psnr"].legends
    assert [t.get_text() for t in legend.get_texts()] == list(many)
    ax = drawn["per_class_psnr"].axes[0]
    assert len({tuple(c.patches[0].get_facecolor()) for c in ax.containers}) == 13
    assert len(set(map(tuple, plotting.palette(25)))) == 25


@pytest.mark.parametrize(("seeds", "label"), [(1, "mean"), (3, "mean, 95% CI")])
def test_the_seed_spread_legend_names_an_interval_only_where_one_is_drawn(monkeypatch, tmp_path, seeds, label):
    results = make_results({variant: mses[:seeds] for variant, mses in THREE_VARIANTS.items()})
    legend = draw_all(monkeypatch, tmp_path, results)["findings_seed_spread"].axes[0].get_legend()
    assert label in [t.get_text() for t in legend.get_texts()]


def test_the_at_a_glance_figures_name_each_variant_as_labelled(monkeypatch, tmp_path):
    specs = {"a": spec([1, 1, 2, 1]), "b": spec([2, 1, 1, 1], "linear"), "c": spec([2, 1, 1, 1])}  # b: c's twin
    published = make_published({"a": 0.0035})
    drawn = draw_all(monkeypatch, tmp_path, make_results(THREE_VARIANTS), published, specs=specs)
    for fig in (drawn["findings_seed_spread"], drawn["study_comparison"]):
        assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == ["a (layer 3)", "b (layer 1)", "c (layer 1)"]
    assert len(drawn["study_comparison"].axes[1].lines) == 2  # the published lines still find their variant
