"""Task names match the same way in every loader, in both directions: the name tables print
("Action Sequence") selects the file stem ("action_sequence") and the stem selects the named task,
case, spaces, underscores and hyphens ignored; an unknown name's error lists both forms."""

from __future__ import annotations

import pytest

from mapflow_tl.data.loaders import load_mvbench, load_tomato, load_tvbench, task_key
from mapflow_tl.data.errors import DataError
from mapflow_tl.synthtv.dataset import load_synthtv

FORMS = ["Action Sequence", "action_sequence", "action sequence", "ACTION-SEQUENCE",
         "ActionSequence", " Action  Sequence "]


def test_every_form_has_one_key():
    assert {task_key(form) for form in FORMS} == {"actionsequence"}
    assert task_key("Fine-grained Action") == task_key("fine_grained_action")
    assert task_key("action_sequence") != task_key("action_antonym")


@pytest.mark.parametrize("form", FORMS)
def test_synthtv_and_tvbench_take_every_form(form, tmp_path):
    data = load_synthtv([form], limit=2, cache=tmp_path)
    assert {sample.task for sample in data} == {"Action Sequence"}
    # the written set is TVBench's format: the TVBench loader takes the same names
    again = load_tvbench(data.root, [form], require_windows=False)
    assert [s.id for s in again] == [s.id for s in data]


def test_tomato_and_mvbench_resolve_names_to_their_stems(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "json").mkdir()
    # no task files: the non-strict load records each selected task's missing file by its stem
    tomato = load_tomato(tmp_path, ["Visual Cues", "shape & trend", "COUNT"], strict=False)
    assert sorted(skip.task for skip in tomato.skipped) == ["count", "shape&trend", "visual_cues"]
    mvbench = load_mvbench(tmp_path, ["fine grained action", "Action-Sequence"], strict=False)
    assert sorted(skip.task for skip in mvbench.skipped) == ["Action Sequence",
                                                             "Fine-grained Action"]


def test_unknown_task_errors_list_both_forms(tmp_path):
    with pytest.raises(DataError, match=r"action_sequence \('Action Sequence'\).*colour"):
        load_synthtv(["Action Sequenze"], limit=2, cache=tmp_path)
    (tmp_path / "json").mkdir()
    with pytest.raises(DataError, match=r"fine_grained_action \('Fine-grained Action'\)"):
        load_mvbench(tmp_path, ["fine grained actions"], strict=False)
