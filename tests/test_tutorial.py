"""docs/tutorial.ipynb runs top to bottom (its cells assert every claim they print), and the
English and Chinese notebooks are what docs/make_tutorial.py writes, with the same code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
from nbclient import NotebookClient

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("make_tutorial", DOCS / "make_tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_notebooks_are_the_generators_output_with_the_same_code():
    gen = _generator()
    for lang, name in ((0, "tutorial.ipynb"), (1, "tutorial.zh.ipynb")):
        saved = nbformat.read(DOCS / name, as_version=4)
        assert saved.cells == gen.notebook(lang).cells, f"{name}: run python docs/make_tutorial.py"
    en, zh = (nbformat.read(DOCS / n, as_version=4) for n in ("tutorial.ipynb", "tutorial.zh.ipynb"))
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == "code"]  # noqa: E731
    assert code(en) == code(zh) and len(code(en)) >= 5
    assert [c.cell_type for c in en.cells] == [c.cell_type for c in zh.cells]


def test_the_tutorial_executes_and_its_asserts_hold(tmp_path):
    nb = nbformat.read(DOCS / "tutorial.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "max |by hand - autograd|" in outputs and "with it zeroed" in outputs
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images  # the table heatmaps were drawn
