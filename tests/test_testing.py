"""The numerical contract in code (mapflow_tl.testing.assert_rows_close): what it lets through
and what it must catch, on rows written by hand."""

import pytest

from mapflow_tl.metrics import relative_change
from mapflow_tl.testing import PROBABILITY_TOLERANCE, assert_rows_close


def row(p_pred=0.02, base=0.021, token=16, correct=False, layers=(3, 4, 5)):
    return {"sample": "s/0", "layer": 4, "layers": list(layers), "base_token": 16,
            "base_p_pred": base, "p_pred": p_pred,
            "change_pred": relative_change(base=base, knockout=p_pred),
            "token": token, "correct": correct, "top_probs": [p_pred, 0.01]}


def test_rounding_passes_and_the_tolerance_is_the_documented_one():
    assert PROBABILITY_TOLERANCE == 1e-5
    reference = [row(), row(p_pred=0.5, base=0.6)]
    moved = [row(p_pred=0.02 + 5e-9), row(p_pred=0.5 - 9e-6, base=0.6 + 9e-6)]
    assert_rows_close(moved, reference)


@pytest.mark.parametrize("changed, column", [
    (row(p_pred=0.02 + 2e-5), "p_pred"),            # a probability beyond 1e-5
    (row(token=17), "token"),                        # another answer
    (row(correct=True), "correct"),                  # another flag
    (row(layers=(3, 4)), "layers"),                  # other layers
])
def test_what_a_different_split_may_not_change(changed, column):
    with pytest.raises(AssertionError, match=column):
        assert_rows_close([changed], [row()])


def test_relative_change_is_held_to_its_probabilities_rounding():
    reference = row(p_pred=0.02, base=0.021)
    # the change of a rounding-level move of p passes (2.4e-5 pp for 5e-9)...
    near = dict(reference, change_pred=reference["change_pred"] + 2.4e-5)
    assert_rows_close([near], [reference])
    # ...a change that no probability within 1e-5 can explain does not (0.2 pp)
    far = dict(reference, change_pred=reference["change_pred"] + 0.2)
    with pytest.raises(AssertionError, match="change_pred"):
        assert_rows_close([far], [reference])


def test_missing_rows_and_columns_are_named():
    with pytest.raises(AssertionError, match="1 rows, expected 2"):
        assert_rows_close([row()], [row(), row()])
    incomplete = {key: value for key, value in row().items() if key != "token"}
    with pytest.raises(AssertionError, match="columns"):
        assert_rows_close([incomplete], [row()])
    with pytest.raises(AssertionError, match="nan"):
        assert_rows_close([row(p_pred=float("nan"))], [row()])
