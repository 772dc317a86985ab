"""``boundfinder.profile``: error layer by layer against float64, the cost table, and ``boundfinder profile``.

Seeds are fixed (the autouse fixture seeds torch with 0; each model here is built after its own
``torch.manual_seed``), so every number below is the same on every run of this CPU build.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from boundfinder import BoundfinderError, FormatError, quantize
from boundfinder.cli import main as cli_main
from boundfinder.profile import (
    DEFAULT_FORMATS,
    OUTPUT,
    CostTable,
    ErrorProfile,
    cost_profile,
    error_profile,
)

# float32's unit roundoff: the relative error of one rounding to float32
U32 = 2.0**-24


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def _images(n: int = 64, seed: int = 1) -> torch.Tensor:
    # digits-like: 1x8x8 images of k/16 pixels (on the grid of every format with >= 3 fraction bits)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (n, 1, 8, 8), generator=g).float() / 16


class Swish(nn.Module):
    """A layer whose forward is two ops (sigmoid, then a product): the op level rounds between them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class Block(nn.Module):
    """Pre-norm residual block; the residual sum is computed outside any layer."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.act = Swish()
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class ResidualNet(nn.Module):
    """A model of the test's own (outside the package): residual blocks with LayerNorm, an output computed after
    the last layer (a mean over a doubled head) so that the output row is its own."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(64, d)
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x.flatten(1)))
        return self.head(h) * 0.5 + self.head(h).mean(dim=1, keepdim=True)


def _residual(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ResidualNet()


# -- the float32 reference ---------------------------------------------------------------------------------------
def test_float32_agrees_with_float64_to_float32_precision():
    prof = error_profile(_mlp(), [_images(128)], formats=["e8m3"])
    assert prof.layers == ("0", "1", "2", "3", "4", "5")  # Sequential returns its last layer's output: no own row
    ref = prof.rows["float32"]
    assert ref[0].max == 0.0  # Flatten of exact inputs: nothing computed
    for row in ref[1:]:
        # one rounding of each output plus float32 sums of <= 64 terms: a few u32 (measured: medians 1.2-2.5
        # u32, maxima 2.6-4.5 u32); > 0: the reference really is float64
        assert 0 < row.median <= 4 * U32, (row.layer, row.median / U32)
        assert row.max <= 8 * U32, (row.layer, row.max / U32)
    # and the formats' errors are far above that floor (e8m3: relative spacing 2^-3)
    assert all(r.median > 1e-3 for r in prof.rows["e8m3"][1:])


@pytest.mark.parametrize("level", ["layer", "op", "batch"])
def test_float32_as_a_format_is_float32_bit_for_bit(level):
    # e8m23 is float32 itself: emulating it must give exactly the plain float32 run, every layer, every item
    prof = error_profile(_residual(), [_images(48)], formats=["e8m23"], level=level)
    for plain, emulated in zip(prof.rows["float32"], prof.rows["e8m23"], strict=True):
        assert np.array_equal(plain.errors, emulated.errors), plain.layer
        if emulated.alone is not None:
            assert np.array_equal(plain.errors, emulated.alone), plain.layer


def test_the_model_and_its_mode_are_left_as_they_were():
    model = _residual().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    error_profile(model, [_images(16)], formats=["e4m3fn"], level="batch")
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32 and not model.inp._forward_hooks


# -- op level against layer level ---------------------------------------------------------------------------------
def _lenet():
    from boundfinder.models import LeNet

    torch.manual_seed(0)
    return LeNet()


@pytest.mark.parametrize("fmt", ["bf16", "e4m3fn", "e5m2", "e8m1"])
def test_op_level_is_the_layer_level_bit_for_bit_on_single_op_layers_with_inputs_on_the_grid(fmt):
    # Every layer of the built-in LeNet is one aten op (conv with bias, relu, max-pool, linear) and nothing is
    # computed between layers: both levels round the same results, the weights the same way. Inputs rounded to
    # the format first: the op level never rounds the model's input (it is no op's output); the layer level does.
    x = quantize(_images(64), fmt)
    by_level = {lv: error_profile(_lenet(), [x], formats=[fmt], level=lv, contribution=False) for lv in ("layer",
                                                                                                          "op")}
    for a, b in zip(by_level["layer"].rows[fmt], by_level["op"].rows[fmt], strict=True):
        assert np.array_equal(a.errors, b.errors), a.layer


@pytest.mark.parametrize("fmt", ["e5m2", "e8m1"])
def test_op_level_error_is_below_the_layer_level_where_the_input_is_off_the_grid(fmt):
    # k/16 pixels need 3 fraction bits: e5m2 and e8m1 round them at the layer level (the first layer's input),
    # never at the op level. So "op >= layer" does not hold in general: at the first layer op < layer. Further on
    # the two only differ by what flowed in, and there is no order (this untrained LeNet, e8m1: op/layer medians
    # 0.89-0.98 and 1.03 at the last layer; trained on digits, 256 items: 0.87-0.94 everywhere).
    x = _images(64)
    med = {lv: error_profile(_lenet(), [x], formats=[fmt], level=lv, contribution=False).median(fmt)
           for lv in ("layer", "op")}
    assert med["op"][0] < 0.95 * med["layer"][0]


def test_op_level_rounds_inside_a_layer_whose_forward_is_several_ops():
    # Swish is sigmoid then a product: the op level rounds the sigmoid too, so at the first such layer its error is
    # above the layer level's (everything before it is equal bit for bit). Further on there is no order: the op
    # level also rounds the residual sums, and errors partly cancel (measured op/layer medians 0.986-1.14).
    formats = ["bf16", "fp16", "e4m3fn", "e5m2", "e8m3"]
    x = _images(128)
    by_level = {lv: error_profile(_residual(), [quantize(x, "e5m2")], formats=formats, level=lv,
                                  contribution=False) for lv in ("layer", "op")}
    layers = by_level["layer"].layers
    first = layers.index("blocks.0.act")
    for fmt in formats:
        layer, op = by_level["layer"].rows[fmt], by_level["op"].rows[fmt]
        for i in range(first):
            assert np.array_equal(layer[i].errors, op[i].errors), (fmt, layers[i])
        assert op[first].median > layer[first].median, fmt


# -- contribution ---------------------------------------------------------------------------------------------------
def test_alone_rounds_only_that_layer():
    prof = error_profile(_mlp(), [_images(64)], formats=["e5m2"], level="batch")
    rows = prof.rows["e5m2"]
    # batch level: parameters only; a layer without parameters rounded alone is float32 exactly
    relu = rows[prof.layers.index("2")]
    assert np.array_equal(relu.alone, prof.rows["float32"][prof.layers.index("2")].errors)
    # the first Linear alone and with everything rounded see the same inputs (exact pixels): the same error
    fc1 = rows[prof.layers.index("1")]
    assert np.array_equal(fc1.alone, fc1.errors)
    # the last layer alone is its own run, not everything rounded. (Not necessarily below it: on this untrained
    # MLP the last layer's weights alone give a median 0.0628, every layer's 0.0578 — upstream errors partly
    # cancel its own; on the trained digits MLP alone is below, 0.034 vs 0.050.)
    last = rows[-1]
    assert not np.array_equal(last.alone, last.errors) and last.alone_median > 0.5 * last.median


# -- your own model -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["layer", "op", "batch"])
def test_a_model_of_the_users_own_profiles_at_every_level(level):
    prof = error_profile(_residual(), [(_images(32), torch.zeros(32, dtype=torch.long))] * 2,
                         formats=["bf16", "e4m3fn"], level=level, items=48)
    assert isinstance(prof, ErrorProfile) and prof.n_items == 48
    assert prof.layers == ("inp", "blocks.0.norm", "blocks.0.fc1", "blocks.0.act", "blocks.0.fc2",
                           "blocks.1.norm", "blocks.1.fc1", "blocks.1.act", "blocks.1.fc2", "head", "head#2",
                           OUTPUT)
    assert prof.modules[1] == "LayerNorm" and prof.modules[3] == "Swish"
    for fmt in ("float32", "bf16", "e4m3fn"):
        for row in prof.rows[fmt]:
            assert row.errors.shape == (48,) and np.isfinite(row.errors).all() and row.per == "item"
    # the second call of the shared head was rounded alone in the same run as the first
    assert prof.rows["bf16"][prof.layers.index("head#2")].alone is not None
    assert prof.rows["bf16"][-1].alone is None  # the output row has no layer of its own
    # bf16 (7 fraction bits) sits far below e4m3fn (3) at every layer that computes something
    assert np.all(prof.median("bf16") < prof.median("e4m3fn"))
    summary = prof.summary()
    json.dumps(summary, allow_nan=False)
    assert len(summary["rows"]) == 3 * len(prof.layers)
    text = prof.report()
    assert "blocks.0.norm" in text and "LayerNorm" in text and "e4m3fn" in text


def test_an_overflowing_format_reads_infinite_not_nan():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    x = torch.full((8, 4), 1000.0)  # beyond e4m3fn's 448: NaN in the format
    prof = error_profile(model, [x], formats=["e4m3fn"])
    row = prof.rows["e4m3fn"][0]
    assert row.median == math.inf and prof.summary()["rows"][1]["median"] == "inf"


# -- bad input ------------------------------------------------------------------------------------------------------
def test_bad_arguments_say_what_is_wrong_and_what_is_valid():
    with pytest.raises(FormatError, match=r"unknown format name 'e9x'; valid names are fp32.*e4m3fn"):
        error_profile(_mlp(), [_images(4)], formats=["bf16", "e9x"])
    with pytest.raises(BoundfinderError, match=r"level must be one of \('op', 'layer', 'batch'\), but got "
                                               r"level='block'"):
        error_profile(_mlp(), [_images(4)], level="block")
    with pytest.raises(BoundfinderError, match=r"at least one format"):
        error_profile(_mlp(), [_images(4)], formats=[])
    with pytest.raises(BoundfinderError, match=r"items must be a positive int.*items=0"):
        error_profile(_mlp(), [_images(4)], items=0)
    with pytest.raises(BoundfinderError, match=r"got no batches"):
        error_profile(_mlp(), [])
    with pytest.raises(BoundfinderError, match=r"every one of depths must be an integer >= 1.*depths=\[0, 2\]"):
        cost_profile(depths=[0, 2])
    with pytest.raises(BoundfinderError, match=r"widths needs at least one value \(e.g. 32,128\), but got "
                                               r"widths=\[\]"):
        cost_profile(widths=[])
    with pytest.raises(BoundfinderError, match=r"kinds must be a non-empty subset of \('mlp', 'cnn'\).*'rnn'"):
        cost_profile(kinds=["rnn"])
    with pytest.raises(FormatError, match=r"unknown format name 'e9x'"):
        cost_profile(format="e9x")


# -- cost -----------------------------------------------------------------------------------------------------------
def test_the_cost_table_has_one_row_per_depth_width_and_level():
    table = cost_profile(kinds=["mlp", "cnn"], depths=[1, 3], widths=[8, 16], batch_size=8, repeats=2, steps=1,
                         warmup=0)
    assert isinstance(table, CostTable)
    mlp = [(r.depth, r.width, r.level) for r in table.rows if r.kind == "mlp"]
    assert sorted(mlp) == sorted((d, w, lv) for d in (1, 3) for w in (8, 16) for lv in ("op", "layer", "batch"))
    cnn = [(r.depth, r.width, r.level) for r in table.rows if r.kind == "cnn"]
    assert sorted(cnn) == sorted((2, w, lv) for w in (8, 16) for lv in ("op", "layer", "batch"))
    for r in table.rows:
        assert r.step_ms > 0 and r.eval_ms > 0 and r.step_ratio > 0 and r.eval_ratio > 0
    # parameters of MLP(hidden=(8,) * 3): 64*8+8 + 2*(8*8+8) + 8*10+10
    assert next(r.parameters for r in table.rows if (r.kind, r.depth, r.width) == ("mlp", 3, 8)) == 754
    assert table.threads == 1 and torch.get_num_threads() >= 1
    json.dumps(table.summary(), allow_nan=False)
    assert "step fp32 ms" in table.report()


# -- the command ----------------------------------------------------------------------------------------------------
def test_command_prints_both_tables_and_writes_json_and_html(tmp_path, capsys):
    out_json, out_html = tmp_path / "p.json", tmp_path / "p.html"
    code = cli_main(["profile", "--model", "mlp", "--epochs", "0", "--formats", "e8m3,e5m2", "--items", "40",
                         "--kinds", "mlp", "--depths", "1", "--widths", "8", "--repeats", "1", "--steps", "1",
                         "--json", str(out_json), "--html", str(out_html)])
    assert code == 0
    out = capsys.readouterr().out
    assert "model mlp on digits (seed 0, untrained (initial weights)), first 40 test items" in out
    assert "features.fc1" in out and "step fp32 ms" in out
    summary = json.loads(out_json.read_text())
    assert summary["error_profile"]["formats"] == ["e8m3", "e5m2"] and summary["error_profile"]["n_items"] == 40
    assert len(summary["cost"]["rows"]) == 3
    page = out_html.read_text()
    assert page.count("<img") == 2 and "features.fc1" in page


def test_command_refuses_bad_values_before_any_work(capsys):
    assert cli_main(["profile", "--depths", "0,1"]) == 2
    assert "depths=[0, 1]" in capsys.readouterr().err
    assert cli_main(["profile", "--widths", ""]) == 2
    assert "--widths needs at least one value" in capsys.readouterr().err
    assert cli_main(["profile", "--formats", "e8m3,float7", "--no-cost"]) == 2
    assert "unknown format name 'float7'" in capsys.readouterr().err
    assert cli_main(["profile", "--no-cost", "--no-error"]) == 2
    assert "leave nothing to do" in capsys.readouterr().err


def test_defaults_are_the_documented_ones():
    import argparse

    from boundfinder.profile_cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["profile"])
    assert args.formats == ",".join(DEFAULT_FORMATS) and args.level == "layer" and args.items == 256
    assert (args.depths, args.widths, args.kinds, args.threads) == ("1,2,4", "32,128", "mlp,cnn", 1)


def test_boundfinder_profile_of_a_trained_logreg_prints_its_layers(capsys):
    assert cli_main(["profile", "--model", "logreg", "--epochs", "0", "--formats", "e5m2", "--items", "16",
                     "--no-cost"]) == 0
    assert "classifier" in capsys.readouterr().out
