"""Cost models: MACs per layer against torch's own FLOP counter, bit-operations and memory by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from boundfinder.errors import BoundfinderError
from boundfinder.search.cost import CostModel, layer_profile


class Block(nn.Module):
    """Convolutions (grouped, strided, transposed), attention over the flattened positions, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.group = nn.Conv2d(8, 8, 3, stride=2, groups=4)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(torch.relu(self.group(torch.relu(self.conv(x)))))
        seq = h.flatten(2).transpose(1, 2)  # (batch, positions, 4)
        # (with the weights returned, attention runs as bmm products that torch's FLOP counter sees)
        return self.head(self.attn(seq, seq, seq)[0]).mean(1)


def test_macs_per_layer_add_up_to_torchs_flop_count():
    model, x = Block(), torch.randn(2, 3, 9, 9)
    prof = layer_profile(model, x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert sum(c.macs for c in prof.values()) * 2 * 2 == counter.get_total_flops()  # 2 flops per MAC, 2 items
    # by hand: the first convolution has 8 x 9 x 9 outputs of 3 x 3 x 3 products each
    assert prof["conv"].macs == 8 * 81 * 27
    assert prof["conv"].params == 8 * 27 + 8 and prof["conv"].outputs == 8 * 81


def test_bit_operations_and_memory_by_hand():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    cm = CostModel(layer_profile(model, torch.zeros(5, 4)))
    widths = {"0": (4, 8), "2": (8, 8)}
    assert cm.bit_operations(widths) == 4 * 8 * 32 + 8 * 8 * 16
    # weights: 40 params at 4 bits + 18 at 8; outputs: 8 at 8 bits, ReLU's 8 at 32 (left out), 2 at 8
    assert cm.memory_bytes(widths) == (40 * 4 + 18 * 8 + 8 * 8 + 8 * 32 + 2 * 8) / 8
    assert cm.bits_per_parameter(widths) == (40 * 4 + 18 * 8) / 58
    assert cm.cost("bops", {}) == 32 * 32 * 48  # everything at float32
    with pytest.raises(BoundfinderError, match="cost must be one of bits, bops, memory"):
        cm.cost("flops", widths)
    with pytest.raises(BoundfinderError, match="layers the model does not have"):
        cm.bits_per_parameter({"fc9": (4, 4)})


def test_a_layer_called_twice_counts_both_calls():
    lin = nn.Linear(3, 3)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(self.lin(x))

    prof = layer_profile(Twice(), torch.zeros(4, 3))
    assert prof["lin"].macs == 2 * 9 and prof["lin"].outputs == 6
