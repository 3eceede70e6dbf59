"""docs/performance.md and the benchmark tables of docs/applications.md are exactly what
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


def test_application_tables_are_rendered_from_the_saved_results():
    perf = performance_module()
    text = (ROOT / "docs/applications.md").read_text(encoding="utf-8")
    assert "<!-- begin position_probe" in text and "<!-- begin time_to_quality" in text
    assert perf.update_readme(text) == text
    assert "| reverse-16 (decoder) |" in text  # the blocks are filled, not empty
    assert "<!-- begin " not in (ROOT / "README.md").read_text(encoding="utf-8")  # the front page quotes no table


def test_every_benchmark_block_outside_the_readme_is_rendered_too():
    perf = performance_module()
    for path in perf.BLOCK_FILES:
        text = path.read_text(encoding="utf-8")
        assert "<!-- begin " in text, f"{path} lists no benchmark block"
        assert perf.update_readme(text) == text, f"{path}: run `python benchmarks/performance.py render`"


def test_the_kg_prose_states_the_saved_kg_vs_pykeen_figures():
    """The sentences of docs/applications.md after the UMLS table quote the three side-by-side runs by hand; each figure
    must be what the saved result says (a rerun that moves one fails here until the prose follows)."""
    import json
    import re
    import statistics

    readme = re.sub(r"\s+", " ", (ROOT / "docs/applications.md").read_text(encoding="utf-8"))
    perf = performance_module()

    def saved(name: str) -> dict:
        return json.loads((perf.RESULTS / f"kg_vs_pykeen_{name}.json").read_text(encoding="utf-8"))

    umls, nations, kin = saved("umls"), saved("nations"), saved("kinships")
    rival = lambda r: r["best_pykeen_model"].removeprefix("PyKEEN ")  # noqa: E731
    tuck = kin["rows"]["PyKEEN TuckER"]
    phrases = [
        f"reaches {umls['learnpos_mrr']:.3f} ± {umls['learnpos_mrr_std']:.3f}, {umls['ratio']:.3f} of "
        f"{rival(umls)}'s MRR",
        f"reaches {nations['learnpos_mrr']:.3f} against {rival(nations)}'s {nations['best_pykeen_mrr']:.3f}",
        f"reaches {kin['learnpos_single_mrr']:.3f} ± {kin['learnpos_single_mrr_std']:.3f} in "
        f"{kin['learnpos_single_wall_s']:.0f} s, below TuckER's {statistics.mean(r['mrr'] for r in tuck):.3f}",
        f"in {kin['learnpos_wall_s']:.0f} s for all",
        f"reach {kin['learnpos_mrr']:.3f} ± {kin['learnpos_mrr_std']:.3f}, {kin['ratio']:.3f} of {rival(kin)}'s MRR in "
        f"less than its {kin['pykeen_wall_s']:.0f} s per run",
    ]
    assert [p for p in phrases if p not in readme] == []


def test_the_extrapolation_reading_states_the_saved_figures():
    """The reading in docs/results.md quotes the extrapolation study by hand; each figure must be what
    benchmarks/results/extrapolation.json says (a rerun that moves one fails here until the prose follows)."""
    import json
    import re
    import statistics

    text = re.sub(r"\s+", " ", (ROOT / "docs/results.md").read_text(encoding="utf-8"))
    r = json.loads((performance_module().RESULTS / "extrapolation.json").read_text(encoding="utf-8"))

    def mean(part, variant, factor, key="token_accuracy"):
        return statistics.mean(x[key] for x in r["parts"][part]["rows"]
                               if x["variant"] == variant and x["factor"] == factor and not x["method"])

    geo = {p: r["parts"][p]["geometry"] for p in r["parts"]}
    phrases = [
        f"copy keeps token accuracy {r['copy']['2x']:.3f} at 2x and {r['copy']['4x']:.3f} at 4x, and reverse "
        f"{r['reverse']['2x']:.3f} and {r['reverse']['4x']:.3f}",
        f"({mean('copy', 'task-ids+randomized', 4.0, 'exact_match'):.3f} and "
        f"{mean('reverse', 'task-ids+randomized', 4.0, 'exact_match'):.3f} for reverse at 4x)",
        f"keeps copy at {mean('copy', 'task-ids+offset', 2.0):.3f} and {mean('copy', 'task-ids+offset', 4.0):.3f} "
        f"and reverse at {mean('reverse', 'task-ids+offset', 2.0):.3f} and "
        f"{mean('reverse', 'task-ids+offset', 4.0):.3f}",
        f"{100 * geo['copy']['task-ids+offset']['far_nearest_share']:.0f}% of its rows",
        f"{100 * geo['reverse']['task-ids+offset']['far_nearest_share']:.0f}% on reverse",
        f"{geo['copy']['task-ids+offset']['near_similarity']:.3f} near, "
        f"{geo['copy']['task-ids+offset']['far_similarity']:.3f} far",
        f"neighbours alike ({geo['copy']['task-ids+randomized']['near_similarity']:.3f}), far rows opposed "
        f"({geo['copy']['task-ids+randomized']['far_similarity']:.3f}), the most similar row within 17 ids for "
        f"{100 * (1 - geo['copy']['task-ids+randomized']['far_nearest_share']):.0f}% of rows",
        f"keeps token accuracy {r['add']['1x']:.3f} at 1x, {r['add']['2x']:.3f} at 2x, {r['add']['4x']:.3f} at 4x "
        f"and {r['add']['5x']:.3f} at 5x",
        f"exact match falls from {mean('add', 'task-ids+offset', 1.0, 'exact_match'):.3f} at 1x",
        f"({mean('add', 'task-ids+randomized', 1.0):.3f} at 1x)",
        f"({100 * geo['add']['task-ids+offset']['far_nearest_share']:.0f}% of the table's rows",
    ]
    assert r["best_variant"] == {"copy": "task-ids+randomized", "reverse": "task-ids+randomized",
                                 "add": "task-ids+offset"}
    assert [p for p in phrases if p not in text] == []
    preset = re.sub(r"\s*#\s*", " ", (ROOT / "learnpos/configs/extrapolate-add.toml").read_text(encoding="utf-8"))
    a = r["add"]  # the add preset's comment quotes the same study
    assert (f"token accuracy {a['1x']:.3f} / {a['2x']:.3f} / {a['4x']:.3f} / {a['5x']:.3f} at 1x / 2x / 4x / 5x, exact "
            f"match {mean('add', 'task-ids+offset', 1.0, 'exact_match'):.3f} at 1x") in preset


def test_the_own_data_kg_reading_states_the_saved_figures():
    """The readings beside the kg_own_data tables (docs/applications.md) and the derive module's docstring quote
    the saved runs by hand; each figure must be what the two JSON files say."""
    import json
    import re

    res = performance_module().RESULTS
    small = json.loads((res / "kg_own_data.json").read_text(encoding="utf-8"))["graphs"]
    large = json.loads((res / "kg_own_data_large.json").read_text(encoding="utf-8"))["graphs"]
    fb = large["fb15k-237"]
    text = re.sub(r"\s+", " ", (ROOT / "docs/applications.md").read_text(encoding="utf-8"))
    doc = re.sub(r"\s+", " ", (ROOT / "learnpos/derive/kg.py").read_text(encoding="utf-8"))
    to_preset = ", ".join(f"{small[g]['ratio_to_preset']:.3f}" for g in ("nations", "umls"))
    to_pykeen = ", ".join(f"{small[g]['ratio_to_pykeen']:.3f}" for g in ("nations", "umls"))
    phrases = [
        f"reach {to_preset} and {small['kinships']['ratio_to_preset']:.3f} of the Nations, UMLS and Kinship presets",
        f"({to_pykeen} and {small['kinships']['ratio_to_pykeen']:.3f} of PyKEEN's best recipe",
        f"its head queries reach {small['nations']['derived_head_mrr']:.3f} test MRR",
        f"to {small['nations']['derived_mrr']:.3f} (its head queries",
        f"PyKEEN's best on all three (UMLS: {small['umls']['derived_wall_s']:.0f} s against "
        f"{small['umls']['pykeen_wall_s']:.0f} s)",
        f"(TuckER, {small['kinships']['ratio_to_pykeen']:.3f} of its MRR",
        f"UMLS from 0.945 to {small['umls']['derived_mrr']:.3f} and Kinship from 0.854 to "
        f"{small['kinships']['derived_mrr']:.3f}",
        f"On WN18RR the derived settings pass the preset ({large['wn18rr']['ratio_to_preset']:.3f} of its MRR); on "
        f"FB15k-237 they reach {fb['ratio_to_preset']:.3f} of it, in {fb['derived_wall_s']:.0f} s against the "
        f"preset's {fb['preset_wall_s']:.0f} s",
        f"head queries went from 0.182 to {fb['derived_head_mrr']:.3f} test MRR and tails from 0.391 to "
        f"{fb['derived_tail_mrr']:.3f}",
        f"({fb['derived_head_mrr']:.3f} against {fb['derived_tail_mrr']:.3f};",
    ]
    assert [p for p in phrases if p not in text] == []
    assert (f"Nations {small['nations']['ratio_to_preset']:.3f}, UMLS {small['umls']['ratio_to_preset']:.3f}, "
            f"Kinships {small['kinships']['ratio_to_preset']:.3f} of their presets" in doc)
    assert (f"WN18RR {large['wn18rr']['ratio_to_preset']:.3f} and FB15k-237 "
            f"{large['fb15k-237']['ratio_to_preset']:.3f}" in doc)


def test_time_to_quality_is_steps_to_target_times_the_step_time(monkeypatch):
    """benchmarks/time_to_quality.py's summary: the median steps to target over seeds times the
    variant's ms per step; None where any seed missed; the baseline is its whole schedule; the
    final loss only of runs that never reached the target."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import time_to_quality as ttq

    def run(step, loss, iters=2000):
        return {"step_at_target": step, "val_loss": loss, "steps_run": step or iters, "iters": iters, "commit": "c"}

    runs = {"nanogpt": {"1": run(None, 1.90), "2": run(None, 1.92)},
            "muon": {"1": run(800, 1.86), "2": run(600, 1.87), "3": run(700, 1.85)},
            "relu2": {"1": run(1400, 1.87), "2": run(None, 1.89)}}
    table = ttq.summarise(runs, {"nanogpt": 50.0, "muon": 100.0, "relu2": 60.0}, "nanogpt")
    v = table["variants"]
    assert table["baseline_s"] == 100.0  # 2,000 steps x 50 ms
    assert v["muon"]["steps_to_target"] == 700 and v["muon"]["time_to_target_s"] == 70.0 and v["muon"]["ratio"] == 0.7
    assert v["relu2"]["time_to_target_s"] is None and v["relu2"]["ratio"] is None
    assert v["relu2"]["final_val_loss"] == 1.89  # its seed that never got there
    assert v["nanogpt"]["final_val_loss"] == 1.91 and v["muon"]["final_val_loss"] is None


def test_the_muon_preset_is_the_recipe_the_ablation_measured(monkeypatch):
    """`shakespeare-char-muon` carries exactly what time_to_quality.py's `recipe` row measured
    (the nanoGPT recipe plus RECIPE): editing one without the other fails here."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import time_to_quality as ttq

    from learnpos.config import config_diff, load_config

    measured = load_config("shakespeare-char", {**ttq.NANOGPT, **ttq.resolve("recipe")})
    assert config_diff(load_config("shakespeare-char-muon"), measured, ignore=("train.out_dir",)) == []
    assert ttq.VARIANTS["recipe"] == ttq.RECIPE and "recipe" in ttq.FINE  # the headline row, finely resolved
    # relative values follow the preset: batch x2 and half the steps of wikitext2-bpe's 16 and 5,000
    assert ttq.resolve("recipe", "wikitext2-bpe") == {"train.optimizer": "muon", "train.batch_size": "32",
                                                       "train.max_iters": "2500"}
    assert ttq.resolve("lr x2") == {"train.lr": "0.002", "train.min_lr": "0.0002"}
    assert ttq._same({"overrides": {"train.lr": "2e-3"}, "target": 1.88}, {"overrides": {"train.lr": "0.002"},
                                                                            "target": 1.88})
