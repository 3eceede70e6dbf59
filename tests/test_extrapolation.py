"""Random offsets (model.positional.offset), task-defined position ids (synthetic.positions=task),
the add task, and the compare variants of the extrapolation study."""

import pytest
import torch
from conftest import run_cli

from learnpos.config import ModelConfig, PositionalConfig, load_config
from learnpos.errors import ConfigError, PositionOutOfRange
from learnpos.model import GPT, IGNORE_INDEX
from learnpos.tasks import TASKS

FAST = {"train.eval_interval": "10", "train.log_interval": "5", "train.warmup_iters": "4"}


def _model(max_len=8, offset=5, randomize=False):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=16, dropout=0.0,
                      positional=PositionalConfig(max_len=max_len, offset=offset, randomize=randomize))
    return GPT(cfg)


def test_offsets_shift_each_sequence_in_training_only_and_reach_every_row():
    m = _model(max_len=8, offset=5)
    assert m.pos.weight.shape[0] == m.max_len == 13  # max_len + offset rows
    m.train()
    torch.manual_seed(1)
    ids = m.pos.resolve(None, 8, 64)  # (64, 8)
    shifts = ids[:, 0]
    assert ((ids - shifts[:, None]) == torch.arange(8)).all()  # one shift per sequence, order kept
    assert shifts.min() == 0 and shifts.max() == 5 and len(shifts.unique()) == 6  # uniform over 0..5
    x = torch.randint(0, 20, (64, 8))
    m(x, targets=x).loss.backward()
    assert (m.pos.weight.grad.abs().sum(1) > 0).all()  # every one of the 13 rows trained
    m.eval()
    assert torch.equal(m.pos.resolve(None, 13, 2), torch.arange(13)[None])  # evaluation: offset 0, all 13 rows
    assert m(torch.randint(0, 20, (2, 13))).logits.shape == (2, 13, 20)


def test_offsets_compose_with_explicit_ids_and_randomized_rows():
    m = _model(max_len=8, offset=4, randomize=True)
    m.train()
    torch.manual_seed(3)
    given = torch.tensor([[0, 1, 1, 2, 0, 3]]).expand(32, 6)  # repeated ids (task-defined) stay equal
    rows = m.pos.resolve(given, 6, 32)
    assert (rows[:, 1] == rows[:, 2]).all() and (rows[:, 0] == rows[:, 4]).all()
    assert (rows[:, 3] > rows[:, 2]).all() and int(rows.max()) < 12  # order kept, inside the 12 rows


def test_training_positions_past_max_len_are_refused_with_the_fix():
    m = _model(max_len=8, offset=5)
    m.train()
    with pytest.raises(PositionOutOfRange, match="random offsets.*offset=5.*below 8"):
        m(torch.randint(0, 20, (2, 9)))
    m.eval()
    m(torch.randint(0, 20, (2, 13)))  # evaluation reads all 13 rows
    with pytest.raises(PositionOutOfRange, match="past the learned position table"):
        m(torch.randint(0, 20, (2, 14)))


@pytest.mark.parametrize("name", ["copy", "reverse", "add"])
def test_task_ids_give_each_answer_predicting_token_the_id_of_its_source(name):
    """With task ids, the token that predicts an answer symbol carries an id whose tokens in the
    first segment hold that symbol (copy, reverse: exactly one token; add: the two digits of that
    place, and the answer digit is their sum with the carry)."""
    cfg = load_config(f"study-{name}", {"synthetic.positions": "task", "synthetic.min_length": "1"})
    task = TASKS[name](cfg)
    for n in (1, 3, 7):
        b = task.eval_set(n)
        ids = b.position_ids[0].tolist()
        first = task.first_segment(n)
        assert b.position_ids.shape == b.idx.shape and len(ids) == task.seq_len(n)
        for row in range(8):
            for t in range(b.idx.shape[1]):
                y = int(b.targets[row, t])
                if y == IGNORE_INDEX:
                    continue
                sources = [s for s in range(first) if ids[s] == ids[t] + (0 if name != "add" else 1)]
                if name == "add":  # the query carries digit j's id; the digits of place j + 1 it needs carry j + 1
                    j = ids[t]  # 0 at '=', then the answer digit's own place
                    if j == n:  # the final carry: no operand digit at place n + 1
                        assert sources == [] and y in (0, 1)
                        continue
                    assert len(sources) == 2
                else:
                    assert len(sources) == 1 and int(b.idx[row, sources[0]]) == y


def test_add_sums_are_right_and_the_loss_is_on_the_answer_only():
    cfg = load_config("study-add", {"synthetic.min_length": "1"})
    task = TASKS["add"](cfg)
    for n in (1, 5, 12):
        b = task.eval_set(n)
        assert b.idx.shape[1] == 3 * n + 2 and (b.targets[:, :2 * n + 1] == IGNORE_INDEX).all()
        for row in range(16):
            x = b.idx[row].tolist()
            a, c_in = x[:n], b.targets[row, 2 * n + 1:].tolist()
            assert x[n] == task.PLUS and x[2 * n + 1] == task.EQ
            value = lambda ds: sum(d * 10 ** i for i, d in enumerate(ds))  # noqa: E731  (least significant first)
            assert value(a) + value(x[n + 1:2 * n + 1]) == value(c_in) and len(c_in) == n + 1


@pytest.mark.parametrize("name,positions", [("reverse", "task"), ("add", "task"), ("add", "running")])
def test_generate_reads_the_same_ids_as_the_teacher_forced_pass(name, positions):
    """`learnpos generate` with task ids continues them as the task defines (reverse counts down):
    the greedy reply equals the argmax of one teacher-forced forward over prompt + reply."""
    cfg = load_config(f"study-{name}", {"synthetic.positions": positions, "synthetic.min_length": "1",
                                        "model.positional.offset": "30"})
    task = TASKS[name](cfg)
    cfg.model.vocab_size = task.vocab_size
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    if positions == "task":
        with torch.no_grad():
            model.pos.weight.normal_(0.0, 1.0)  # rows 50x the tokens' scale: the reply depends on the ids read
    n = 5
    prompt = "3 1 4 1 5" if name == "reverse" else "3 1 4 1 5 + 9 2 6 5 3"
    reply = [int(t.strip("<>")) for t in task.respond(model, prompt, temperature=0.0).split()]  # "<18>": a non-symbol
    xs = [3, 1, 4, 1, 5]
    seq = ([task.BOS, *xs, task.SEP] if name == "reverse" else [*xs, task.PLUS, 9, 2, 6, 5, 3, task.EQ]) + reply
    idx = torch.tensor([seq[:task.seq_len(n)]])
    pos = torch.tensor([task.task_ids(n)]) if positions == "task" else None
    with torch.no_grad():
        logits = model(idx, position_ids=pos, extra_ids=None).logits[0]
    answer_len = n if name == "reverse" else n + 1
    assert logits[-answer_len:].argmax(-1).tolist() == reply


def test_compare_sizes_the_offset_and_randomized_tables_to_the_longest_evaluation(tmp_path):
    from learnpos.compare import variant_config

    over = {"synthetic.min_length": "1"}
    a = variant_config("study-copy", "learned+offset", 1, tmp_path / "a", over, 64)
    assert a.model.positional.offset == 129 and a.model.positional.max_len == 33  # 64 symbols read 129 positions
    b = variant_config("study-copy", "task-ids+randomized", 1, tmp_path / "b", over, 64)
    assert b.synthetic.positions == "task" and b.model.positional.max_len == 65 and b.model.positional.randomize
    c = variant_config("study-add", "task-ids+offset", 1, tmp_path / "c", over, 100)
    assert c.model.positional.offset == 101
    d = variant_config("study-copy", "learned+offset+randomized", 1, tmp_path / "d", over, 64)
    assert (d.model.positional.max_len, d.model.positional.offset) == (33, 96)  # 129 rows in all


def test_the_extrapolate_preset_trains_and_evaluates_at_4x_and_names_the_limit(tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "--preset", "extrapolate-copy", "--train.max_iters=20", "--train.eval_interval=10",
                "--train.warmup_iters=2", "--synthetic.n_eval=32", f"--train.out_dir={run}", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", "--run", run, "--length", "64", cwd=tmp_path)
    assert r.returncode == 0 and "token_accuracy" in r.stdout, r.stderr
    r = run_cli("eval", "--run", run, "--length", "65", cwd=tmp_path)
    assert r.returncode == 2 and "at most length 64" in r.stderr and "Traceback" not in r.stderr


def test_row_geometry_tells_an_ordered_table_from_one_whose_far_rows_were_never_told_apart():
    from learnpos.analysis.geometry import row_geometry
    from learnpos.positional import sinusoid_table

    torch.manual_seed(0)
    smooth = sinusoid_table(torch.arange(64), 32) @ torch.randn(32, 32)  # neighbours alike, far rows not
    g = row_geometry(smooth, 8)
    assert g["near_similarity"] > g["far_similarity"] and g["far_nearest_share"] == 0.0
    noise = torch.randn(64, 32)  # no order: most rows' nearest row is one of the 55 far ones
    g = row_geometry(noise, 8)
    assert g["far_nearest_share"] > 0.5 and abs(g["near_similarity"] - g["far_similarity"]) < 0.05
    assert row_geometry(noise[:5], 8)["far_similarity"] is None


def test_generate_takes_every_length_a_range_trained_model_was_evaluated_up_to():
    over = {"synthetic.min_length": "1", "synthetic.eval_length": "64", "model.positional.max_len": "129"}
    ranged = TASKS["reverse"](load_config("study-reverse", over))
    for n in (1, 20, 64):
        ranged.check_prompt_length([0] * n)
    with pytest.raises(ConfigError, match=r"give 1\.\.64 space-separated symbols \(got 65\)"):
        ranged.check_prompt_length([0] * 65)
    fixed = TASKS["reverse"](load_config("study-reverse", {**over, "synthetic.min_length": "0"}))
    fixed.check_prompt_length([0] * 64)  # one training length: only it and the evaluation length
    with pytest.raises(ConfigError, match=r"give 16 or 64 space-separated symbols \(got 20\)"):
        fixed.check_prompt_length([0] * 20)
