"""Layer choices pinned against the official code (byminji/map-the-flow @566f3ed), re-stated."""

from __future__ import annotations

import pytest

from mapflow_tl.layers import (attention_map_layers, default_window_size, layer_range, window,
                                window_rule)


def official_window(n_layers: int) -> int:
    """The official window size: ``--window`` defaults to 9 (information_flow_analysis.py:66)
    and no script passes another; VideoLLaMA3's script fixes ``window = 9``
    (information_flow_analysis_videollama3.py:119) — the same 9 on 28, 32 and 40 layers."""
    return 9


def official_window_layers(layer: int, n_layers: int, k: int) -> list[int]:
    """information_flow_analysis_videollama3.py:286: ``range(max(0, layer - window // 2),
    min(num_layers, layer - (-window // 2)))``."""
    return list(range(max(0, layer - k // 2), min(n_layers, layer - (-k // 2))))


@pytest.mark.parametrize("n_layers", [18, 24, 28, 32, 40, 48, 80])
def test_window_is_the_official_nine_from_eighteen_layers(n_layers):
    k = default_window_size(n_layers)
    assert k == official_window(n_layers)
    for layer in range(n_layers):
        assert window(layer, n_layers=n_layers) == official_window_layers(layer, n_layers, k)
    assert "official" in window_rule(n_layers)


def test_window_scales_only_below_eighteen_layers():
    # the paper's 9 of 32 scaled and made odd, by hand: SynthTV's 8 layers keep k = 3
    assert [default_window_size(n) for n in (4, 8, 12, 17)] == [1, 3, 3, 5]
    assert "scaled to 8 layers" in window_rule(8)
    assert window_rule(32, 5) == "k = 5 (--window)"
    # the old scaling gave 11 on LLaVA-NeXT-13B's 40 layers and 7 on VideoLLaMA3's 28
    assert default_window_size(40) == default_window_size(28) == 9


def test_attention_map_layers_are_the_official_eleven_to_twenty():
    # analysis/attention_visualization.py:501-506: attentions[10:20], labelled 11 … 20
    assert attention_map_layers(32) == list(range(10, 20))
    # scaled to the depth (rounded half up): 10/32 and 20/32 of the layers
    assert attention_map_layers(28) == list(range(9, 18))
    assert attention_map_layers(8) == [3, 4]
    assert attention_map_layers(4) == [1, 2]
    with pytest.raises(ValueError, match="n_layers must be a positive int"):
        attention_map_layers(0)


def test_layer_range_reads_the_papers_one_based_ranges_with_or_without_the_depth():
    assert layer_range(6, 15) == range(5, 15)            # the paper's "L6–15", 0-based 5 … 14
    assert layer_range(6, 15, 32) == range(5, 15)
    assert layer_range(32, 32, 32) == range(31, 32)
    with pytest.raises(ValueError, match="L30–33 .* 32-layer model"):
        layer_range(30, 33, 32)
    with pytest.raises(ValueError, match="layers count from 1"):
        layer_range(0, 4)
    with pytest.raises(ValueError, match="L5–4"):
        layer_range(5, 4)
    with pytest.raises(ValueError, match="first must be an int"):
        layer_range(2.0, 4)
