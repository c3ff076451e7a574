"""A light top: ``import mapflow_tl`` and the commands that need no model (``--help``,
``circuits``, ``data check``) must not import TransformerLens, transformers, plotly or the model
code — each costs seconds at start-up. Checked in a fresh interpreter, since the test process
itself has imported everything by now."""

import json
import subprocess
import sys

import pytest

HEAVY = ("transformer_lens", "transformers", "plotly", "mapflow_tl.models.videollm",
         "mapflow_tl.models.load", "mapflow_tl.models.backbone")


def _modules_after(code: str) -> set[str]:
    script = (code + "\nimport json, sys\n"
              "print(json.dumps(sorted(m for m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(name for name in HEAVY if name in modules)


def test_import_mapflow_tl_is_light():
    modules = _modules_after("import mapflow_tl")
    assert _heavy(modules) == [] and "torch" not in modules


def test_help_is_light():
    modules = _modules_after(
        "import contextlib, io\nfrom mapflow_tl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    assert _heavy(modules) == [] and "torch" not in modules


@pytest.mark.parametrize("argv", [["circuits"], ["data", "check", "--dataset", "tvbench",
                                                 "--data-root", "/nonexistent"]])
def test_commands_without_a_model_import_no_model_code(argv):
    modules = _modules_after(
        "import contextlib, io\nfrom mapflow_tl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    main({argv!r})")
    assert _heavy(modules) == []


def test_public_names_resolve():
    import mapflow_tl as mf

    for name in mf.__all__:
        assert getattr(mf, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        mf.nonexistent
