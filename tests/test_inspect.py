"""`learnpos inspect`: the report of a run holds every section that applies, its images are
real PNGs embedded in one HTML file, untrained rows are named and explained, and what does not
apply is a note, not an error."""

from __future__ import annotations

import base64
import json
import re
from html import unescape

import numpy as np
import pytest
import torch

from learnpos.analysis.report import pca_2d, similarity_by_distance
from learnpos.cli import main as cli_main
from learnpos.config import load_config
from learnpos.inspection import _ranges, inspect_run
from learnpos.train import train

PNG = b"\x89PNG\r\n\x1a\n"


def quick(tmp_path, name: str, **over):
    o = {"train.out_dir": str(tmp_path / name), "train.max_iters": "12", "train.eval_interval": "6",
         "train.log_interval": "3", "train.warmup_iters": "0", "train.position_stats": "true",
         "synthetic.length": "6", "model.positional.max_len": "24", "model.n_embd": "32", "model.n_layer": "1",
         **{k: str(v) for k, v in over.items()}}
    cfg = load_config("demo", o)
    train(cfg, quiet=True)
    return tmp_path / name


def images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_of_a_learned_run_has_every_section_and_real_images(tmp_path):
    run = quick(tmp_path, "learned")
    path = inspect_run(run)
    html = path.read_text(encoding="utf-8")
    for heading in ("Configuration", "Loss curves", "Final metrics", "Learned table: pos", "Task figures: reverse",
                    "Verification"):
        assert f">{heading}" in html, heading
    pics = images(html)
    # loss curves + 5 pictures of the table (4 + training) + per-position accuracy
    assert len(pics) == 7 and all(p.startswith(PNG) for p in pics)
    assert sorted(p.name for p in path.parent.glob("*.png")) == sorted(
        ["loss_curves.png", "pos_similarity.png", "pos_by_distance.png", "pos_pca.png", "pos_norms.png",
         "pos_training.png", "per_position_accuracy.png"])
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from elsewhere: opens offline


def test_rows_no_sequence_reaches_are_named_with_the_reason(tmp_path):
    run = quick(tmp_path, "learned")
    html = inspect_run(run).read_text(encoding="utf-8")
    stats = json.loads((run / "config.json").read_text())["model"]["positional"]
    from learnpos.tasks.synthetic import ReverseTask
    used = ReverseTask.seq_len(6)  # the training sequences' length: rows from here on get no gradient
    assert stats["max_len"] == 24 and used < 24
    assert f"Never trained: {24 - used} rows ({used}-23): no training sequence reaches them: the longest used " \
           f"{used} positions" in html


def test_what_does_not_apply_is_a_note_not_an_error(tmp_path):
    run = quick(tmp_path, "rope", **{"model.positional.kind": "rope", "train.position_stats": "false"})
    html = inspect_run(run, tmp_path / "out").read_text(encoding="utf-8")
    assert "model.positional.kind=rope and no named tables: this run has no learned table to show" in html
    assert "no verify.json in the run" in html
    assert (tmp_path / "out" / "report.html").exists() and not (run / "inspect").exists()


def test_a_verify_summary_is_shown_when_the_run_has_one(tmp_path):
    run = quick(tmp_path, "learned")
    (run / "verify.json").write_text("all checks passed\n" + json.dumps({"ok": False, "checks": [
        {"name": "attention backward", "max_abs_err": 1e-12, "max_rel_err": 3e-10, "tol": 1e-8, "ok": True},
        {"name": "adamw step", "max_abs_err": 1e-3, "max_rel_err": 1e-2, "tol": 1e-8, "ok": False}]}) + "\n")
    html = inspect_run(run).read_text(encoding="utf-8")
    assert "1 of 2 checks passed; failed: adamw step." in html


def test_inspect_through_the_cli(tmp_path, capsys):
    run = quick(tmp_path, "learned")
    assert cli_main(["inspect", str(run)]) == 0
    assert re.search(r"wrote .*report\.html \(7 plots\) in [0-9.]+ s", capsys.readouterr().out)
    assert cli_main(["inspect", str(tmp_path / "nothing")]) == 2
    assert cli_main(["inspect", str(run), "--device", "auto", "--out", str(tmp_path / "auto")]) == 0
    assert (tmp_path / "auto" / "report.html").exists()
    if not torch.cuda.is_available():
        assert cli_main(["inspect", str(run), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_table_geometry_helpers():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    d, mean = similarity_by_distance(torch.stack([e1, e2, e1, e2, e1]))  # rows alternate between two directions
    assert d.tolist() == [0, 1, 2, 3, 4] and np.allclose(mean, [1, 0, 1, 0, 1])
    d, mean = similarity_by_distance(torch.stack([e1, e1, e2, e2]))
    assert np.allclose(mean, [1, 2 / 3, 0, 0])  # d=1: pairs (0,1) and (2,3) alike, (1,2) orthogonal
    rows = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # points on a line: one component explains all
    proj, share = pca_2d(rows)
    assert share[0] == pytest.approx(1.0) and np.allclose(np.abs(proj[:, 0]), [1, 0, 1])
    assert _ranges(np.array([0, 1, 2, 5, 7, 8])) == "0-2, 5, 7-8"


def test_named_tables_and_a_language_model_get_their_own_sections(tmp_path):
    tables = json.dumps([{"name": "segment", "rows": 2}, {"name": "symbol_index", "rows": 8}])
    run = quick(tmp_path, "tables", **{"model.tables": tables})
    html = inspect_run(run).read_text(encoding="utf-8")
    for name in ("pos", "segment", "symbol_index"):
        assert f">Learned table: {name}" in html
    assert "the named table 'segment': 2 rows" in unescape(html)

    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question. " * 200, encoding="utf-8")
    cfg = load_config("shakespeare-char", {
        "lm.data": str(text), "train.out_dir": str(tmp_path / "lm"), "train.max_iters": "6",
        "train.eval_interval": "6", "train.warmup_iters": "0", "lm.block_size": "16",
        "model.positional.max_len": "16", "model.n_layer": "1", "model.n_embd": "32", "model.n_head": "2"})
    train(cfg, quiet=True)
    before = sorted(p.name for p in (tmp_path / "lm").iterdir())
    html = inspect_run(tmp_path / "lm", tmp_path / "lm-report").read_text(encoding="utf-8")
    assert "validation loss by position in the window" in html
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == before  # --out elsewhere: the run is untouched
