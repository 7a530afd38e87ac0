"""The rate–distortion figure (pipeline.lib.figures_rd): each variant in its one colour, each storage form its
marker, the classical codecs in greys with their own line styles, and a close-up on the variants' compact forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from pipeline.lib import figures_rd, plotting, rate_distortion
from tests.test_rate_distortion import _means

CODECS = ("jpeg", "webp", "pca")


def test_rd_figure_keeps_refined_points_apart_from_the_encoders():
    settings = [
        "float32, 32 dims",
        "float32, refined ≤100 steps, 32 dims",
        "uint8, 32 dims",
        "uint8, refined ≤100 steps, 32 dims",
        "uint8 range-coded, refined ≤100 steps, 32 dims",
        "entropy-coded one file per image, 16 dims",
    ]
    table = pd.DataFrame({"method": "m", "setting": settings, "kind": "variant"})
    assert list(figures_rd._variant_points(table)) == [
        ("m", "float32"),
        ("m", "float32, refined ≤100 steps"),
        ("m", "uint8"),
        ("m", "uint8, refined ≤100 steps"),
        ("m", "uint8 range-coded, refined ≤100 steps"),
        ("m", "entropy-coded one file per image"),
    ]


@pytest.fixture(scope="module")
def drawn() -> tuple:
    """Eight variants (float32 at 128 B, uint8 at 32.1 B) beside three codecs and a lossless one, drawn."""
    means = _means(
        **{
            f"v{i}": [32, 24.0 + i, 25.0, 0.97, 0.004, 0.8, 32.1, 23.9 + i, 24.9, 0.969, 0.0041, np.nan, np.nan]
            for i in range(8)
        }
    )
    rows = [
        {"method": m, "setting": f"quality {q}", "bytes_per_image": 100.0 + q, "psnr_pooled": 20.0 + q, "ssim": 0.9}
        for m in CODECS
        for q in (1, 2)
    ]
    rows.append({"method": "png", "setting": "lossless", "bytes_per_image": 400.0, "psnr_pooled": np.nan})
    colours = dict(zip(means.index, plotting.palette(8)[::-1]))  # the caller's colours, not a palette's order
    saved = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(plotting, "save", lambda fig, out, **kwargs: saved.append(fig))
        figures_rd.rate_distortion(rate_distortion.assemble(means, rows), None, colours)
    saved[0].canvas.draw()
    return saved[0], colours


def test_each_variant_keeps_its_colour_on_every_panel_and_the_codecs_their_own_styles(drawn):
    fig, colours = drawn
    for ax in fig.axes:
        for points in ax.collections:
            variant = points.get_label().split()[0]
            assert to_hex(points.get_facecolor()[0]) == to_hex(colours[variant])
        codecs = [line for line in ax.get_lines() if line.get_label() in CODECS]
        assert [line.get_label() for line in codecs] == list(CODECS)
        styles = {(to_hex(line.get_color()), line.get_linestyle(), line.get_marker()) for line in codecs}
        assert len(styles) == len(CODECS)
        assert not {to_hex(line.get_color()) for line in codecs} & {to_hex(c) for c in colours.values()}


def test_the_legend_names_each_variant_form_and_codec_once(drawn):
    fig, colours = drawn
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [*colours, "float32", "uint8", *CODECS]
    assert all(legend.get_window_extent().y1 <= ax.get_window_extent().y0 for ax in fig.axes)


def test_the_close_ups_hold_the_compact_forms_and_the_moonshot_but_not_float32(drawn):
    fig, _ = drawn
    psnr, ssim = fig.axes[2], fig.axes[3]
    for ax in (psnr, ssim):
        (low_x, high_x), (low_y, high_y) = ax.get_xlim(), ax.get_ylim()
        assert low_x < 32.1 < high_x < 128  # uint8 in, float32 out
        values = [23.9 + i for i in range(8)] if ax is psnr else [0.969]
        assert low_y < min(values) and max(values) < high_y
    assert psnr.get_ylim()[1] > rate_distortion.MOONSHOT["psnr_pooled"]
    assert psnr.get_xlim()[0] < rate_distortion.MOONSHOT["bytes_per_image"]
    lossless = [t for t in psnr.texts if "lossless" in t.get_text()]
    assert lossless and all(t.get_clip_on() for t in lossless)  # at 400 B: off the close-up, not drawn beside it
