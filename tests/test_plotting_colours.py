"""Colours that pair the variants upsampling at the same layer (pipeline.lib.plotting.variant_colours): a hue per
layer, a shade per group of variants alike but for their strides, distinct colours where that cannot hold."""

from __future__ import annotations

from matplotlib.colors import to_hex

from pipeline.lib import plotting
from tests.figures_support import spec

TAB20C = [to_hex(c) for c in plotting.plt.get_cmap("tab20c").colors]
OTHERS = [to_hex(c) for c in plotting.plt.get_cmap("tab20b").colors[0 :: plotting.SHADES]]


def at(layer: int, n: int = 4) -> list[int]:
    """Decoder strides that upsample at `layer` (0-based)."""
    return [2 if i == layer else 1 for i in range(n)]


def colours_of(specs: dict, variants: list[str] | None = None) -> dict[str, str]:
    return {v: to_hex(c) for v, c in plotting.variant_colours(variants or list(specs), specs).items()}


def test_two_families_take_a_hue_per_layer_dark_and_light():
    specs = {
        "m1": spec(at(2)),
        "m2": spec(at(0)),
        "m1_linear": spec(at(2), "linear"),
        "m2_linear": spec(at(0), "linear"),
    }
    index = {v: TAB20C.index(c) for v, c in colours_of(specs).items()}
    assert index == {"m1": 0, "m2": 4, "m1_linear": 2, "m2_linear": 6}  # m1's hue first; shades 0 and 2 of 4


def test_four_families_take_the_four_shades_and_a_fifth_the_other_colours():
    specs = {f"f{f}l{layer}": spec(at(layer), f"act{f}") for f in range(5) for layer in range(2)}
    colours = colours_of(specs)
    assert [TAB20C.index(colours[f"f{f}l0"]) for f in range(4)] == [0, 1, 2, 3]
    assert [TAB20C.index(colours[f"f{f}l1"]) for f in range(4)] == [4, 5, 6, 7]
    assert [colours["f4l0"], colours["f4l1"]] == OTHERS[:2]


def test_a_model_and_its_twin_alone_are_a_pair_and_a_variant_at_no_shared_layer_is_not():
    specs = {"m1": spec(at(2)), "m1_linear": spec(at(2), "linear"), "solo": spec(at(1), "tanh")}
    colours = colours_of(specs)
    assert TAB20C.index(colours["m1"]) // 4 == TAB20C.index(colours["m1_linear"]) // 4
    assert colours["m1"] != colours["m1_linear"] and colours["solo"] == OTHERS[0]


def test_where_pairing_cannot_hold_each_variant_takes_a_distinct_colour():
    six_layers = {f"l{layer}": spec(at(layer, 6)) for layer in range(6)}
    one_layer_twice = {"a": spec([1, 1, 2, 1]), "b": spec([1, 1, 3, 1]), "c": spec(at(0))}  # a and b: layer 3
    paired = {"x": spec(at(0, 8)), "y": spec(at(1, 8))}  # a family; each other variant alone at its own layer
    six_others = paired | {f"o{i}": spec(at(i + 2, 8), f"act{i}") for i in range(6)}
    for specs in (six_layers, one_layer_twice, six_others):
        colours = colours_of(specs)
        assert list(colours.values()) == [to_hex(c) for c in plotting.palette(len(specs))]


def test_without_specs_the_colours_are_the_palettes():
    assert list(colours_of({}, ["a", "b", "c"]).values()) == [to_hex(c) for c in plotting.palette(3)]


def test_a_variant_is_labelled_by_its_layer_where_its_family_or_its_colour_pairs_it():
    specs = {
        "m1": spec(at(2)),
        "m2": spec(at(0)),
        "m1_linear": spec(at(2), "linear"),  # no family of its own, but m1's hue in a lighter shade
        "lonely": spec(at(1), "linear") | {"latent_dim": 8},  # no family, no layer shared: its name alone
    }
    labels = plotting.layer_labels(list(specs), specs)
    assert labels == {"m1": "m1 (layer 3)", "m2": "m2 (layer 1)", "m1_linear": "m1_linear (layer 3)"}
    assert plotting.layer_labels(["m1"], specs) == {}  # one variant: nothing to pair it with


def test_every_family_is_labelled_by_layer_also_beyond_the_groups_the_colours_pair():
    inits = ["glorot_uniform", "he_uniform", "a", "b", "c"]  # five families: one more than the shades
    specs = {f"{init}-{layer}": spec(at(layer)) | {"init": init} for init in inits for layer in (0, 2)}
    assert len(plotting.paired_groups(list(specs), specs)) == plotting.SHADES
    labels = plotting.layer_labels(list(specs), specs)
    assert labels["c-0"] == "c-0 (layer 1)" and len(labels) == len(specs)
