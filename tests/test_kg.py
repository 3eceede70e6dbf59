"""Knowledge-graph completion: data, the filtered evaluator (proven equal to PyKEEN's), the
CoKE-style task, and its commands."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, shared_data_dir
from safetensors import safe_open

from learnpos.analysis.ranking import AnswerIndex, RankAccumulator, filtered_ranks
from learnpos.config import load_config
from learnpos.data.kg import index_triples, load_kg, read_splits
from learnpos.errors import ConfigError, DataError

SHARED = shared_data_dir()
ROOT = Path(__file__).resolve().parents[1]


def write_dataset(folder, train, valid, test, crlf=False):
    folder.mkdir(parents=True, exist_ok=True)
    end = "\r\n" if crlf else "\n"
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_text("".join("\t".join(r) + end for r in rows), encoding="utf-8")
    return folder


def toy_graph(n=12, seed=0):
    """A small graph with structure a model can learn: r0 is a permutation, r1 its inverse."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    triples = [(f"e{i}", "next", f"e{perm[i]}") for i in range(n)] + \
              [(f"e{perm[i]}", "prev", f"e{i}") for i in range(n)]
    rng.shuffle(triples)
    return triples


# ---------------------------------------------------------------------------------- data


def test_dataset_folder_tar_and_crlf_read_the_same(tmp_path):
    tri = toy_graph()
    plain = write_dataset(tmp_path / "plain", tri[:18], tri[18:21], tri[21:])
    crlf = write_dataset(tmp_path / "crlf", tri[:18], tri[18:21], tri[21:], crlf=True)
    with tarfile.open(tmp_path / "ds.tar.gz", "w:gz") as tar:
        tar.add(plain, arcname="ds")  # members in a subfolder, as release archives have them
    a, b, c = read_splits(plain), read_splits(crlf), read_splits(tmp_path / "ds.tar.gz")
    assert a == b == c and len(a["train"]) == 18
    shipped = tmp_path / "shipped"  # a folder holding one archive and a README, as FB15k-237 ships
    shipped.mkdir()
    (tmp_path / "ds.tar.gz").rename(shipped / "ds.tar.gz")
    (shipped / "README.txt").write_text("about the data\n", encoding="utf-8")
    assert read_splits(shipped) == a
    (shipped / "other.tgz").write_bytes(b"")
    with pytest.raises(DataError, match=r"has no train.txt but 2 archives \(ds.tar.gz, other.tgz\)"):
        read_splits(shipped)


def test_malformed_lines_name_the_file_and_line(tmp_path):
    folder = write_dataset(tmp_path / "d", [("a", "r", "b")], [], [])
    (folder / "train.txt").write_text("a\tr\tb\na\tr\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.txt line 2: expected 3 tab-separated fields"):
        read_splits(folder)
    (folder / "train.txt").write_text("a\t\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.txt line 1: empty field"):
        read_splits(folder)
    (folder / "test.txt").unlink()
    with pytest.raises(DataError, match="has no test.txt"):
        read_splits(folder)
    with pytest.raises(DataError, match="give --kg.data PATH"):
        load_kg("wn18rr")


def test_unseen_entities_are_counted_and_left_out(tmp_path):
    tri = toy_graph()
    data = index_triples({"train": tri, "valid": [("e0", "next", "zz"), tri[0]],
                          "test": [("e1", "unknown-rel", "e2"), ("new", "next", "e3"), tri[1]]})
    assert data.unseen == {"valid": 1, "test": 2}
    assert len(data.valid) == 1 and len(data.test) == 1


def test_unseen_triples_are_reported_once_however_often_the_task_is_built(tmp_path, caplog):
    """A derived run builds the task for its probe and again to train: one warning per split."""
    tri = toy_graph()
    folder = write_dataset(tmp_path / "g", tri, [("e0", "next", "zz"), tri[0]], [tri[1]])
    from learnpos.tasks.kg import KGTask
    cfg = load_config("kg-umls", {"kg.data": str(folder), "kg.dataset": "g"})
    with caplog.at_level("WARNING"):
        KGTask(cfg), KGTask(cfg)
    said = [r.getMessage() for r in caplog.records if "not seen in training" in r.getMessage()]
    assert said == ["g: 1 valid triples have an entity or relation not seen in training; they are left out of "
                    "ranking (the standard policy)"]


# ----------------------------------------------------------------------------- evaluator


def reference_ranks(scores, answer, known):
    """Realistic rank by the definition, one query at a time, in plain Python."""
    s = scores[answer]
    others = [scores[e] for e in range(len(scores)) if e == answer or e not in known]
    optimistic = 1 + sum(x > s for x in others)
    pessimistic = sum(x >= s for x in others)
    return (optimistic + pessimistic) / 2


def test_filtered_ranks_by_the_definition_with_ties():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1], [0.0, 0.0, 0.0, 0.0, 0.0]])
    answers = torch.tensor([0, 3])
    known = torch.tensor([[True, True, False, False, False], [False, True, False, True, False]])
    got = filtered_ranks(scores, answers, known).tolist()
    # query 0: 0.9 is filtered; ties with two others: optimistic 1, pessimistic 3 -> 2
    # query 1: all equal, entity 1 filtered: 4 candidates tie -> (1 + 4) / 2
    assert got == [2.0, 2.5]
    for b in range(2):
        assert got[b] == reference_ranks(scores[b].tolist(), int(answers[b]), set(np.flatnonzero(known[b])))


@pytest.fixture(scope="module")
def scored_queries():
    """A random graph, score matrices with many ties (scores rounded to a coarse grid), and
    the queries of a test split, for both evaluators."""
    rng = np.random.default_rng(3)
    E, R = 40, 5
    triples = np.unique(np.stack([rng.integers(0, E, 600), rng.integers(0, R, 600), rng.integers(0, E, 600)], 1),
                        axis=0)
    test = triples[rng.choice(len(triples), 80, replace=False)]
    scores = {d: torch.from_numpy(np.round(rng.normal(size=(len(test), E)), 1)).float() for d in ("tail", "head")}
    return E, R, triples, test, scores


def test_evaluator_equals_pykeen_rank_based_evaluator(scored_queries):
    """The same score matrices through PyKEEN's own filtering and RankBasedEvaluator and through
    learnpos's: every metric, per direction and both, equal to 1e-6 (ties included: the
    scores sit on a 0.1 grid)."""
    pytest.importorskip("pykeen")
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.evaluation.evaluator import _evaluate_batch

    E, R, known, test, scores = scored_queries

    class Fixed:  # a PyKEEN model stand-in that returns the given score matrix
        def predict(self, hrt_batch, target, slice_size=None, mode=None):
            return scores["tail" if target == "tail" else "head"].clone()

    evaluator = RankBasedEvaluator(filtered=True)
    for target in ("tail", "head"):
        _evaluate_batch(batch=torch.from_numpy(test), model=Fixed(), target=target, evaluator=evaluator,
                        slice_size=None, all_pos_triples=torch.from_numpy(known), relation_filter=None,
                        restrict_entities_to=None, mode=None)
    theirs = evaluator.finalize()

    index, acc = AnswerIndex(known, E, R), RankAccumulator()
    for direction, column in (("tail", 2), ("head", 0)):
        answers = torch.from_numpy(test[:, column])
        acc.add(direction, filtered_ranks(scores[direction], answers, index.mask(direction, test)))
    ours = acc.metrics()
    names = {"mrr": "inverse_harmonic_mean_rank", "mr": "arithmetic_mean_rank", "hits@1": "hits_at_1",
             "hits@3": "hits_at_3", "hits@10": "hits_at_10"}
    compared = 0
    for side, prefix in (("both", ""), ("tail", "tail_"), ("head", "head_")):
        for ours_name, pykeen_name in names.items():
            expected = theirs.get_metric(f"{side}.realistic.{pykeen_name}")
            assert ours[prefix + ours_name] == pytest.approx(expected, abs=1e-6), (side, ours_name)
            compared += 1
    assert compared == 15
    assert 0 < ours["hits@1"] < ours["hits@10"] < 1  # the fixture exercises ties and misses


def test_answer_index_masks_every_known_answer(scored_queries):
    E, R, known, test, _ = scored_queries
    index = AnswerIndex(known, E, R)
    mask = index.mask("tail", test).numpy()
    for row, (h, r, _t) in zip(mask, test, strict=True):
        assert set(np.flatnonzero(row)) == {t for hh, rr, t in known if hh == h and rr == r}


# ---------------------------------------------------------------------------------- task


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from learnpos.train import train

    root = tmp_path_factory.mktemp("kg")
    tri = toy_graph(16)
    data = write_dataset(root / "toy", tri, tri[:6], tri[6:12])  # valid/test repeat train: learnable
    cfg = load_config("kg-umls", {"kg.data": str(data), "kg.dataset": "toy", "model.n_layer": "2",
                                  "model.n_embd": "64", "train.max_iters": "300", "train.eval_interval": "150",
                                  "train.warmup_iters": "20", "train.batch_size": "32", "train.lr": "3e-3",
                                  "model.dropout": "0.0", "train.out_dir": str(root / "run")})
    result = train(cfg, quiet=True)
    return root, result


def test_kg_task_learns_and_reports_filtered_metrics(toy_run):
    root, result = toy_run
    m = result.metrics
    assert m["ranked_split"] == "valid" and m["queries"] == 12
    assert m["mrr"] > 0.9, m  # memorised: the valid triples are training triples
    for key in ("tail_mrr", "head_mrr", "hits@1", "hits@3", "hits@10", "mr"):
        assert key in m


def test_inspect_report_of_a_kg_run_shows_metrics_by_direction(toy_run):
    from learnpos.inspection import inspect_run
    from learnpos.load import load_run

    root, result = toy_run
    model, _, task = load_run(root / "run")
    (fig,) = task.figures(model, "cpu")
    m = task.evaluate(model, "cpu")
    assert fig.x == ["mrr", "hits@1", "hits@3", "hits@10"]
    assert fig.series == {d: [m[f"{d}_{k}"] for k in fig.x] for d in ("tail", "head")}
    html = inspect_run(root / "run", root / "report").read_text(encoding="utf-8")
    assert "Task figures: kg" in html and "Learned table: pos" in html
    assert (root / "report" / "mrr_by_direction.png").exists()


def test_coke_queries_differ_only_by_position():
    from learnpos.tasks import build_task  # registers the tasks before the preset is read

    if not (SHARED / "umls").exists():
        pytest.skip("needs ../shared/data")
    cfg = load_config("kg-umls", {"kg.data": str(SHARED / "umls"), "kg.targets": "triple", "kg.queries": "coke"})
    task = build_task(cfg)
    tail, _ = task.queries(task.data.test[:1], "tail")
    head, _ = task.queries(task.data.test[:1], "head")
    assert tail[0, 2] == head[0, 0] == task.MASK and tail[0, 1] == head[0, 1]
    assert task.vocab_size == task.E + task.R + 1
    # the figures docs/usage.md gives for kg.targets: 10,432 triple queries, 1,560 distinct ones
    assert len(task._examples()[0]) == 2 * len(task.data.train) == 10432
    cfg.kg.targets = "query"
    assert len(build_task(cfg)._examples()[0]) == 1560


def test_positions_benchmark_trains_coke_queries_whatever_the_preset_uses(tmp_path, monkeypatch):
    """benchmarks/kg_positions.py measures what the positions do; with reciprocal queries (the
    kg-umls and kg-kinships presets) the inverse relation would tell the directions apart instead."""
    import learnpos.tasks  # noqa: F401 - registers the kg config section before a preset is read

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import kg_positions

    for dataset in ("umls", "kinships", "nations"):
        cfg = kg_positions.run_config(dataset, "none", "1", str(tmp_path / dataset), steps=400)
        assert (cfg.kg.queries, cfg.model.positional.kind, cfg.train.max_iters) == ("coke", "none", 400)
    assert load_config("kg-umls").kg.queries == "reciprocal"  # the case this test is for


def test_query_targets_spread_each_query_over_all_its_answers(tmp_path):
    """kg.targets=query: each distinct query is one example per epoch and its loss is the
    cross-entropy against all its training answers (recomputed here by the definition, a loop
    over queries); where every query has one answer it equals the triple loss exactly."""
    from learnpos.load import build_model
    from learnpos.tasks import build_task

    tri = [("a", "r", "b"), ("a", "r", "c"), ("a", "r", "d"), ("b", "r", "c"), ("c", "s", "a"), ("d", "s", "a")]
    data = write_dataset(tmp_path / "g", tri, tri[:2], tri[2:4])
    over = {"kg.data": str(data), "kg.dataset": "g", "kg.targets": "query", "model.n_layer": "1",
            "model.n_embd": "16", "model.n_head": "2", "kg.label_smoothing": "0.3"}
    cfg = load_config("kg-umls", over)
    task = build_task(cfg)
    cfg.model.vocab_size = task.vocab_size
    idx, rows = task._examples()
    # tails: (a,r) {b,c,d}, (b,r) {c}, (c,s) {a}, (d,s) {a}; heads: (r,b) {a}, (r,c) {a,b}, (r,d) {a}, (s,a) {c,d}
    assert len(idx) == 8 and sorted(np.diff(task._answer_offsets.numpy()).tolist()) == [1, 1, 1, 1, 1, 2, 2, 3]
    batch = task.train_batch(0, 8)
    assert sorted(batch.targets[batch.idx == task.MASK].tolist()) == list(range(8))  # each query once an epoch
    torch.manual_seed(0)
    model = build_model(cfg, task).eval()
    loss = task.loss(model, batch)
    logp = torch.log_softmax(task.scores(model, batch.idx).float(), -1)
    expected = []
    for row, q in enumerate(batch.targets[batch.idx == task.MASK].tolist()):
        answers = task._answer_ids[task._answer_offsets[q]:task._answer_offsets[q + 1]]
        expected.append(-0.7 * logp[row, answers].mean() - 0.3 * logp[row].mean())
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)
    # kg.query_weight=answers: the same per-query terms, weighed by each query's answer count
    counts = torch.tensor([float(task._answer_offsets[q + 1] - task._answer_offsets[q])
                           for q in batch.targets[batch.idx == task.MASK].tolist()])
    task.kg.query_weight = "answers"
    weighted = (torch.stack(expected) * counts).sum() / counts.sum()
    assert task.loss(model, batch).item() == pytest.approx(weighted.item(), rel=1e-6)
    assert abs(weighted.item() - loss.item()) > 1e-4  # the weights change the loss here
    task.kg.query_weight = "uniform"
    # each distinct query's answers are exactly its training answers
    for q, x in enumerate(idx):
        answers = set(task._answer_ids[task._answer_offsets[q]:task._answer_offsets[q + 1]].tolist())
        tails, heads = task.queries(task.data.train, "tail"), task.queries(task.data.train, "head")
        both = np.concatenate([tails[0], heads[0]]), np.concatenate([tails[1], heads[1]])
        assert answers == set(both[1][(both[0] == x).all(1)].tolist())

    single = [("a", "r", "b"), ("c", "s", "d")]  # every query has one answer: the two losses agree
    data = write_dataset(tmp_path / "one", single, single[:1], single[1:])
    for targets in ("query", "triple"):
        cfg = load_config("kg-umls", {**over, "kg.data": str(data), "kg.targets": targets})
        task = build_task(cfg)
        cfg.model.vocab_size = task.vocab_size
        torch.manual_seed(0)
        model = build_model(cfg, task).eval()
        idx, _ = task._examples()
        batch = task.train_batch(0, len(idx))
        order = np.lexsort(batch.idx.numpy().T[::-1])  # the same queries in the same order for both
        batch = type(batch)(batch.idx[order], batch.targets[order])
        if targets == "query":
            query_loss = task.loss(model, batch).item()
        else:
            assert task.loss(model, batch).item() == pytest.approx(query_loss, rel=1e-6)


cli = run_cli  # in this process: these tests are about what the commands compute and say


def test_eval_split_save_scores_and_predict(toy_run):
    root, result = toy_run
    run = root / "run"
    r = cli("eval", "--run", str(run), "--split", "test", "--json", "--save-scores", str(root / "s.safetensors"),
            cwd=root)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["ranked_split"] == "test" and m["queries"] == 12 and m["run_dir"] == str(run)
    with safe_open(root / "s.safetensors", framework="pt") as f:
        scores, queries, meta = f.get_tensor("scores"), f.get_tensor("queries"), f.metadata()
    entities = json.loads(meta["entities"])
    assert scores.dtype == torch.float32 and scores.shape == (12, len(entities)) and queries.shape == (12, 4)
    assert set(queries[:, 3].tolist()) == {0, 1} and meta["split"] == "test"
    # the saved matrix re-ranks to the reported MRR
    from learnpos.data.kg import load_kg as load

    data = load("toy", str(root / "toy"))
    index, acc = AnswerIndex(data.known_triples(), data.n_entities, data.n_relations), RankAccumulator()
    for d, (direction, column) in enumerate((("tail", 2), ("head", 0))):
        rows = queries[:, 3] == d
        q = queries[rows, :3].numpy()
        acc.add(direction, filtered_ranks(scores[rows], torch.from_numpy(q[:, column]), index.mask(direction, q)))
    assert acc.metrics()["mrr"] == pytest.approx(m["mrr"], abs=1e-6)

    p = cli("kg", "predict", "--run", str(run), "--head", "e0", "--relation", "next", "--top", "3", "--json",
            cwd=root)
    assert p.returncode == 0, p.stderr
    preds = json.loads(p.stdout.strip().splitlines()[-1])["predictions"]
    assert len(preds) == 3 and preds[0]["known"] is True
    bad = cli("kg", "predict", "--run", str(run), "--head", "e99", "--relation", "nxt", cwd=root)
    assert bad.returncode == 2 and "unknown relation 'nxt'" in bad.stderr and "closest: next" in bad.stderr
    bad = cli("eval", "--run", str(run), "--split", "dev", cwd=root)
    assert bad.returncode == 2 and "evaluates train, valid, test" in bad.stderr


def _tiny_kg_run(root, name, data, **sets):
    from learnpos.train import train

    over = {"kg.data": str(data), "kg.dataset": "toy", "model.n_layer": "1", "model.n_embd": "32",
            "train.max_iters": "40", "train.eval_interval": "40", "train.warmup_iters": "5", "train.batch_size": "32",
            "train.lr": "3e-3", "train.out_dir": str(root / name), **sets}
    train(load_config("kg-umls", over), quiet=True)
    return root / name


def test_ensemble_ranks_the_mean_of_the_members_log_softmax(tmp_path):
    """`learnpos eval --run A --run B` ranks the mean of the members' log-softmax scores: the
    same MRR as ranking that mean computed here from each run alone (either member alone gives
    other ranks on these under-trained runs)."""
    from learnpos.load import load_run, load_runs

    root, tri = tmp_path, toy_graph(40)
    data = write_dataset(root / "toy", tri, tri[:20], tri[20:40])
    first, second = (_tiny_kg_run(root, f"tiny-{seed}", data, **{"train.seed": seed}) for seed in ("3", "7"))
    ensemble, _, task = load_runs([first, second])
    ours = task.evaluate(ensemble, torch.device("cpu"), split="test")
    members = [load_run(d)[0] for d in (first, second)]
    test, acc, alone, means = task.data.split("test"), RankAccumulator(), [RankAccumulator(), RankAccumulator()], {}
    for direction, column in (("tail", 2), ("head", 0)):
        idx = torch.from_numpy(task.queries(test, direction)[0])
        with torch.no_grad():
            scores = [task.scores(m, idx).float() for m in members]
        answers, known = torch.from_numpy(test[:, column]), task.known.mask(direction, test)
        mean = torch.stack([s.log_softmax(-1) for s in scores]).mean(0)
        means[direction] = mean
        acc.add(direction, filtered_ranks(mean, answers, known))
        for member, s in zip(alone, scores, strict=True):
            member.add(direction, filtered_ranks(s, answers, known))
    assert ours["mrr"] == pytest.approx(acc.metrics()["mrr"], abs=1e-6)
    assert all(abs(m.metrics()["mrr"] - ours["mrr"]) > 1e-3 for m in alone)  # both members count
    assert ours["queries"] == 40
    saved = root / "scores.safetensors"
    r = cli("eval", "--run", str(first), "--run", str(second), "--split", "test", "--json", "--save-scores",
            str(saved), cwd=root)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout.strip().splitlines()[-1])
    assert shown["runs"] == [str(first), str(second)] and shown["mrr"] == pytest.approx(ours["mrr"], abs=1e-6)
    with safe_open(saved, framework="pt") as f:  # the tail queries come first, in split order
        assert torch.allclose(f.get_tensor("scores")[:len(test)], means["tail"], atol=1e-5)
        assert json.loads(f.metadata()["members"]) == [str(first), str(second)]

    p = cli("kg", "predict", "--run", str(first), "--run", str(second), "--head", "e0", "--relation", "next",
            "--top", "3", "--json", cwd=root)
    assert p.returncode == 0, p.stderr
    preds = json.loads(p.stdout.strip().splitlines()[-1])["predictions"]
    idx = torch.from_numpy(task.queries(np.array([[task.entity_id("e0"), task.relation_id("next"), 0]]), "tail")[0])
    with torch.no_grad():
        expected = torch.stack([task.scores(m, idx)[0].float().log_softmax(-1) for m in members]).mean(0).topk(3)
    assert [x["entity"] for x in preds] == [task.data.entities[i] for i in expected.indices.tolist()]
    assert [x["score"] for x in preds] == pytest.approx(expected.values.tolist(), abs=1e-5)
    shown = cli("kg", "predict", "--run", str(first), "--run", str(second), "--head", "e0", "--relation", "next",
                cwd=root)
    assert shown.returncode == 0 and "scores: mean log-probability of 2 runs" in shown.stdout, shown.stderr


def test_ensemble_refuses_runs_that_do_not_combine(toy_run, tmp_path):
    from learnpos.config import load_run_config

    root, _ = toy_run
    run = str(root / "run")
    coke = _tiny_kg_run(tmp_path, "coke", root / "toy", **{"kg.queries": "coke"})
    tri = toy_graph(16, seed=1)
    elsewhere = _tiny_kg_run(tmp_path, "elsewhere", write_dataset(tmp_path / "other", tri, tri[:6], tri[6:12]))
    ran = load_run_config(root / "run" / "config.json").train.dtype  # as resolved on this machine
    other_dtype = _tiny_kg_run(tmp_path, "dtype", root / "toy",
                               **{"train.dtype": "bfloat16" if ran == "float32" else "float32"})
    cases = [((run, run), "is given twice"),
             ((run, str(coke)), "must read the same queries"),
             ((run, str(elsewhere)), "reads other data"),
             ((run, str(other_dtype)), "must share train.dtype")]
    for runs, message in cases:
        r = cli("eval", *[a for d in runs for a in ("--run", d)], cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (runs, r.stderr)


def test_only_kg_runs_make_an_ensemble(toy_run, tmp_path):
    from learnpos.train import train

    for seed in ("1", "2"):
        train(load_config("study-copy", {"train.max_iters": "2", "train.eval_interval": "2", "train.seed": seed,
                                         "train.warmup_iters": "1",
                                         "train.out_dir": str(tmp_path / seed)}), quiet=True)
    r = cli("eval", "--run", str(tmp_path / "1"), "--run", str(tmp_path / "2"), cwd=tmp_path)
    assert r.returncode == 2 and "evaluates one run at a time" in r.stderr, r.stderr
    r = cli("eval", "--run", str(toy_run[0] / "run"), "--run", str(tmp_path / "1"), cwd=tmp_path)
    assert r.returncode == 2 and "must be of one task" in r.stderr, r.stderr
    r = cli("kg", "predict", "--run", str(tmp_path / "1"), "--run", str(tmp_path / "2"), "--head", "e0",
            "--relation", "next", cwd=tmp_path)
    assert r.returncode == 2 and "`learnpos kg predict` needs a run of task kg" in r.stderr, r.stderr


def test_benchmark_ensemble_trains_distinct_seeds_and_ranks_them_together(toy_run, tmp_path, monkeypatch):
    """benchmarks/kg_vs_pykeen.py --ensemble: each member its own seed (seed + 1000 j), trained
    as a `learnpos train` process, the ensemble ranked over all of them."""
    from learnpos.config import load_run_config
    from learnpos.load import load_runs

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import kg_vs_pykeen

    root, _ = toy_run
    sets = ["model.n_embd=32", "train.eval_interval=10", "train.warmup_iters=2", "train.batch_size=16"]
    single, ensemble = kg_vs_pykeen.run_ensemble("umls", str(root / "toy"), "5", 10, sets, str(tmp_path), 2, 2)
    dirs = [tmp_path / f"learnpos-5-{j}" for j in range(2)]
    assert [load_run_config(d / "config.json").train.seed for d in dirs] == [5, 1005]
    assert [load_run_config(d / "config.json").model.n_embd for d in dirs] == [32, 32]
    model, _, task = load_runs(dirs)
    assert ensemble["mrr"] == pytest.approx(task.evaluate(model, torch.device("cpu"), split="test")["mrr"], abs=1e-6)
    first, _, task = load_runs(dirs[:1])
    assert single["mrr"] == pytest.approx(task.evaluate(first, torch.device("cpu"), split="test")["mrr"], abs=1e-6)
    assert single["mrr"] != ensemble["mrr"]


def test_kg_config_errors():
    with pytest.raises(ConfigError, match="needs a bidirectional encoder"):
        load_config("kg-umls", {"model.causal": "true"})
    with pytest.raises(ConfigError, match="kg.queries='both' is not one of: coke, reciprocal"):
        load_config("kg-umls", {"kg.queries": "both"})
    with pytest.raises(ConfigError, match="kg.targets='all' is not one of: triple, query"):
        load_config("kg-umls", {"kg.targets": "all"})


def test_train_dataset_from_the_cli(tmp_path):
    """`learnpos train --dataset umls`, cut to a few steps: the preset, PyKEEN's copy (or the
    shared data), early stopping's best weights, and a filtered test evaluation."""
    if (SHARED / "umls").exists():
        data = ["--data", str(SHARED / "umls")]
    else:
        pytest.importorskip("pykeen")  # PyKEEN's own copy of UMLS
        data = []
    r = cli("train", "--dataset", "umls", *data, "--train.max_iters=10", "--train.eval_interval=10",
            "--train.warmup_iters=2", "--model.n_layer=1", "--quiet", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["task"] == "kg" and 0 < res["mrr"] <= 1 and res["queries"] == 2 * 652  # UMLS valid: 652 triples
    assert (tmp_path / "runs/kg-umls/best/step-00000010/model.safetensors").exists()
    e = cli("eval", "--run", "runs/kg-umls", "--split", "test", "--json", cwd=tmp_path)
    assert e.returncode == 0 and json.loads(e.stdout.strip().splitlines()[-1])["queries"] == 2 * 661


def test_sampled_negatives_score_the_answers_and_the_drawn_entities(tmp_path):
    """kg.negatives = N: the loss is the cross-entropy over the batch's answers plus N drawn
    entities (recomputed here from the full score matrix restricted to those columns); with
    N >= E every entity is a candidate and the loss is exactly the full 1-N loss."""
    from learnpos.load import build_model
    from learnpos.tasks import build_task

    tri = toy_graph()
    data = write_dataset(tmp_path / "g", tri, tri[:4], tri[4:8])
    for targets in ("triple", "query"):
        over = {"kg.data": str(data), "kg.dataset": "g", "kg.targets": targets, "model.n_layer": "1",
                "model.n_embd": "16", "model.n_head": "2", "kg.label_smoothing": "0.2"}
        cfg = load_config("kg-umls", over)
        task = build_task(cfg)
        cfg.model.vocab_size = task.vocab_size
        torch.manual_seed(0)
        model = build_model(cfg, task).eval()
        batch = task.train_batch(0, 16)
        full = task.loss(model, batch)
        task.kg.negatives = task.E
        assert task.loss(model, batch).item() == pytest.approx(full.item(), rel=1e-6)
        task.kg.negatives = 3
        torch.manual_seed(5)
        sampled = task.loss(model, batch)
        answers = batch.targets[batch.idx == task.MASK]
        rows, cols, count = (torch.arange(len(answers)), answers, None) if targets == "triple" \
            else task._answers_of(answers)
        torch.manual_seed(5)
        cand = task.candidates(cols)
        assert set(cols.tolist()) <= set(cand.tolist()) and len(cand) < task.E
        logp = torch.log_softmax(task.scores(model, batch.idx).float()[:, cand], -1)
        where = {e: i for i, e in enumerate(cand.tolist())}
        per = torch.zeros(len(answers))
        n = torch.zeros(len(answers))
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            per[r] -= logp[r, where[c]]
            n[r] += 1
        expected = (0.8 * per / n - 0.2 * logp.mean(-1)).mean()
        assert sampled.item() == pytest.approx(expected.item(), rel=1e-5)
        assert sampled.item() != pytest.approx(full.item(), rel=1e-3)  # fewer candidates: a different loss


def test_sampled_negatives_resume_bit_exactly(tmp_path):
    """The negatives are drawn from torch's global generator, whose state every checkpoint keeps:
    a run stopped halfway and resumed draws the same entities as one run straight through."""
    from safetensors.torch import load_file

    from learnpos.runs import latest_checkpoint
    from learnpos.train import train

    tri = toy_graph()
    data = write_dataset(tmp_path / "g", tri, tri[:4], tri[4:8])
    over = {"kg.data": str(data), "kg.dataset": "g", "kg.negatives": "3", "model.n_layer": "1",
            "model.n_embd": "16", "model.n_head": "2", "train.max_iters": "20", "train.eval_interval": "10",
            "train.warmup_iters": "2", "train.batch_size": "8", "model.dropout": "0.1"}

    def cfg(name):
        return load_config("kg-umls", {**over, "train.out_dir": str(tmp_path / name)})

    train(cfg("a"), quiet=True)
    assert train(cfg("b"), quiet=True, stop_after=10).step == 10
    assert train(cfg("b"), resume=True, quiet=True).step == 20
    wa = load_file(latest_checkpoint(tmp_path / "a") / "model.safetensors")
    wb = load_file(latest_checkpoint(tmp_path / "b") / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
