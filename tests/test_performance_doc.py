"""docs/performance.md and the README's benchmark tables are exactly what
`benchmarks/performance.py render` makes of the saved `--json` results: no figure there is
typed by hand."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def performance_module():
    spec = importlib.util.spec_from_file_location("performance", ROOT / "benchmarks" / "performance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_performance_doc_is_rendered_from_the_saved_results():
    perf = performance_module()
    assert sorted(p.stem for p in perf.RESULTS.glob("*.json")) == sorted(perf.BENCHMARKS)
    assert (ROOT / "docs/performance.md").read_text(encoding="utf-8") == perf.render()


def test_readme_tables_are_rendered_from_the_saved_results():
    perf = performance_module()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- begin position_probe" in readme and "<!-- begin time_to_quality" in readme
    assert perf.update_readme(readme) == readme
    assert "| reverse-16 (decoder) |" in readme  # the blocks are filled, not empty


def test_every_benchmark_block_outside_the_readme_is_rendered_too():
    perf = performance_module()
    for path in perf.BLOCK_FILES:
        text = path.read_text(encoding="utf-8")
        assert "<!-- begin " in text, f"{path} lists no benchmark block"
        assert perf.update_readme(text) == text, f"{path}: run `python benchmarks/performance.py render`"
