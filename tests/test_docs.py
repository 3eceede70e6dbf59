"""docs/derivation.md and its Chinese translation docs/derivation.zh.md, held to the code.

- every relative link resolves to a file in the repository;
- every linked name (`function`, `Class.method`, `Config.field`, `test_...`) is defined in the
  file it links to, and every linked `learnpos verify` row is a row of the real output
  pasted in the document, named the way `learnpos/verify.py` names its checks;
- the two languages carry the same links, formulas, checked numbers and verify output;
- every displayed formula (a ```math block) is followed by a link to its code and one to its check;
- every number in a block marked `checked by tests/test_docs.py` is recomputed: with NumPy
  here, and with the project's own NumPy reference (`learnpos.reference`, `lr_at`, the
  presets) in one subprocess where torch cannot be imported, so this file stays fast.
"""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = {"en": ROOT / "docs" / "derivation.md", "zh": ROOT / "docs" / "derivation.zh.md"}
VERIFY_PY = ROOT / "learnpos" / "verify.py"  # the command; its rows are linked to it
VERIFY_OPTIM_PY = ROOT / "learnpos" / "verify_optim.py"  # the optimizer rows it runs
FIXTURES_PY = ROOT / "learnpos" / "fixtures.py"  # GRAD_CASES: the case names verify.py reports
MARK = "tests/test_docs.py"  # first line of every machine-checked block names this file

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(\d+(?:\.\d+)*)?", re.M)
NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
VERIFY_ROW = re.compile(  # one row of the `learnpos verify` table: name, errors, tolerance, status
    r"^(?P<name>\S.*?)\s{2,}(?P<abs>\S+)\s+(?P<rel>\S+)\s+(?P<tol>(?:rel|abs) \S+)\s+(?P<ok>ok|FAIL)\b")

CHECKED_KEYS = {
    "B", "T", "L", "C", "mask", "pos", "dh", "dP",
    "P0", "sgd_lr", "P_sgd", "adamw_lr", "betas", "eps", "wd", "P_adamw_wd0", "P_adamw_wd",
    "adam_first_step_over_lr", "adam_single_gradient_total_over_lr", "adam_first_step_over_lr_beta2_0999",
    "adam_first_step_over_lr_beta2_0999_t1000",
    "demo_decay_factor", "stats_test_decay_factor",
    "cos_same_position_randn", "cos_same_position_normal", "repeat_copy_bytes", "raw_sinusoid_rms",
    "sinusoid_scale_for_002",
}


# ------------------------------------------------------------------------ parsing helpers


def read(lang: str) -> str:
    return DOCS[lang].read_text(encoding="utf-8")


def fenced_blocks(doc: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(doc)]


def prose(doc: str) -> str:
    """The document without its fenced code blocks (links inside code do not count)."""
    return FENCE.sub("", doc)


def links(doc: str) -> list[tuple[str, str]]:
    """(text without backticks, target) of every Markdown link outside code blocks."""
    return [(m.group(1).strip().strip("`"), m.group(2)) for m in LINK.finditer(prose(doc))]


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")


def resolve(doc_path: Path, target: str) -> Path:
    return (doc_path.parent / target.split("#", 1)[0]).resolve()


def defined_names(path: Path) -> set[str]:
    """Top-level functions and classes, `Class.method` and `Class.field` (annotated fields)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(f"{node.name}.{item.name}")
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(f"{node.name}.{item.target.id}")
    return names


def verify_output(doc: str) -> str:
    """The pasted `learnpos verify` console block."""
    blocks = [body for info, body in fenced_blocks(doc) if info == "console" and body.startswith("$ learnpos verify")]
    assert len(blocks) == 1, "expected one ```console block starting with `$ learnpos verify`"
    return blocks[0]


def verify_rows(doc: str) -> dict[str, str]:
    """Check name -> status ('ok' | 'FAIL') of every row in the pasted output."""
    rows = {}
    for line in verify_output(doc).splitlines():
        m = VERIFY_ROW.match(line)
        if m:
            rows[m.group("name")] = m.group("ok")
    return rows


def verify_name_patterns() -> list[re.Pattern]:
    """Regexes for the names `learnpos/verify.py` gives its checks: the first argument of every
    `Check(...)`, and, where a helper passes one of its own parameters on as that name (e.g.
    `_final_params_check(name, ...)`), the matching argument at every call of the helper.
    f-string fields become `.+`; a name made of fields only (`f"{what} {case.name}"`) is
    expanded with what it takes: "loss"/"logits" over the names of GRAD_CASES."""
    tree = ast.Module(body=[node for path in (VERIFY_PY, VERIFY_OPTIM_PY)
                            for node in ast.parse(path.read_text(encoding="utf-8")).body], type_ignores=[])
    cases = ast.parse(FIXTURES_PY.read_text(encoding="utf-8"))
    case_names = [
        call.args[0].value
        for node in cases.body if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "GRAD_CASES" for t in node.targets)
        for call in ast.walk(node.value)
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Case" and call.args
    ]
    assert case_names, "GRAD_CASES not found in learnpos/fixtures.py"

    def is_check(call: ast.AST) -> bool:
        return isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Check" and bool(call.args)

    name_position = {"Check": 0}  # function -> index of the argument that becomes the check name
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            params = [a.arg for a in fn.args.args]
            for call in filter(is_check, ast.walk(fn)):
                if isinstance(call.args[0], ast.Name) and call.args[0].id in params:
                    name_position[fn.name] = params.index(call.args[0].id)
    patterns = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or getattr(call.func, "id", "") not in name_position:
            continue
        i = name_position[call.func.id]
        if len(call.args) <= i:
            continue
        first = call.args[i]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            patterns.append(re.compile(re.escape(first.value)))
        elif isinstance(first, ast.JoinedStr):
            parts = [re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in first.values]
            literal = "".join(v.value for v in first.values if isinstance(v, ast.Constant))
            if literal.strip():
                patterns.append(re.compile("".join(parts)))
            else:  # f"{what} {case.name}" in gradient_checks: what is "loss" or "logits"
                patterns.append(re.compile(f"(?:loss|logits) (?:{'|'.join(map(re.escape, case_names))})"))
    return patterns


def checked_values(doc: str) -> dict:
    """Every assignment in the blocks whose first line names tests/test_docs.py, as Python values."""
    values: dict = {}
    for info, body in fenced_blocks(doc):
        if info != "python" or MARK not in body.splitlines()[0]:
            continue
        for node in ast.parse(body).body:
            assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.unparse(node)
            target, value = node.targets[0], ast.literal_eval(node.value)
            if isinstance(target, ast.Tuple):
                for t, v in zip(target.elts, value, strict=True):
                    values[t.id] = v
            else:
                values[target.id] = value
    return values


# -------------------------------------------------------------------------- the checkers
# Each returns a list of problems, so the same code can be shown to catch planted mistakes.


def broken_links(doc: str, doc_path: Path) -> list[str]:
    problems = []
    for text, target in links(doc):
        if not is_relative(target):
            continue
        path = resolve(doc_path, target)
        if not path.is_file():
            problems.append(f"[{text}]({target}): no such file")
        elif ROOT not in path.parents:
            problems.append(f"[{text}]({target}): outside the repository")
    return problems


def unknown_names(doc: str, doc_path: Path, rows: dict[str, str]) -> list[str]:
    problems = []
    cache: dict[Path, set[str]] = {}
    for text, target in links(doc):
        if not is_relative(target) or not target.split("#", 1)[0].endswith(".py"):
            continue
        path = resolve(doc_path, target)
        if not path.is_file():
            continue  # reported by broken_links
        if text.endswith(".py"):
            if path != (ROOT / text).resolve() and path.name != text:
                problems.append(f"[{text}]({target}): the text names another file")
        elif NAME.fullmatch(text):
            if path not in cache:
                cache[path] = defined_names(path)
            if text not in cache[path]:
                problems.append(f"[{text}]({target}): no `def/class {text}` in {path.relative_to(ROOT)}")
        elif path == VERIFY_PY.resolve():
            if text not in rows:
                problems.append(f"[{text}]({target}): not a row of the pasted `learnpos verify` output")
        else:
            problems.append(f"[{text}]({target}): link text is neither a name, a file nor a verify row")
    return problems


def link_kind(text: str, target: str) -> str:
    """'code' (a name in learnpos/), 'check' (a name in tests/, or a `learnpos verify` row) or 'other'."""
    path = target.split("#", 1)[0]
    if "tests/" in path and NAME.fullmatch(text):
        return "check"
    if path.endswith("learnpos/verify.py") and not NAME.fullmatch(text):
        return "check"
    if "learnpos/" in path and NAME.fullmatch(text):
        return "code"
    return "other"


def formulas(doc: str) -> list[str]:
    """The displayed formulas: ```math blocks (GitHub's form of display math)."""
    return [body for info, body in fenced_blocks(doc) if info == "math"]


def formulas_without_pointers(doc: str) -> list[str]:
    """Every ```math block must be followed, before the next formula or heading, by a link to
    a name in learnpos/ (the code) and one to a test or a verify row (the check). Other code
    blocks in between are skipped (their `#` comments are not headings)."""
    problems, pieces, end = [], [], 0
    for m in FENCE.finditer(doc):  # alternate prose and code blocks, in document order
        pieces += [("prose", doc[end:m.start()]), (m.group(1).strip(), m.group(2))]
        end = m.end()
    pieces.append(("prose", doc[end:]))
    for i, (kind, body) in enumerate(pieces):
        if kind != "math":
            continue
        after = ""
        for next_kind, text in pieces[i + 1:]:
            if next_kind == "math":
                break
            if next_kind == "prose":
                heading = HEADING.search(text)
                after += text[:heading.start()] if heading else text
                if heading:
                    break
        kinds = {link_kind(text, target) for text, target in links(after)}
        if not {"code", "check"} <= kinds:
            problems.append(body.strip().splitlines()[0][:70])
    return problems


# ------------------------------------------------------------------ structure and links


@pytest.fixture(scope="module", params=["en", "zh"])
def lang(request):
    return request.param


def test_both_documents_exist_with_the_same_numbered_sections():
    sections = {k: [(len(m.group(1)), m.group(2)) for m in HEADING.finditer(prose(read(k)))] for k in DOCS}
    assert len(sections["en"]) >= 20
    assert sections["en"] == sections["zh"]


def test_every_relative_link_points_to_an_existing_file(lang):
    doc = read(lang)
    assert len(links(doc)) > 100
    assert broken_links(doc, DOCS[lang]) == []


def test_every_linked_name_is_defined_in_the_linked_file(lang):
    doc = read(lang)
    assert unknown_names(doc, DOCS[lang], verify_rows(doc)) == []


def test_linked_verify_rows_are_real_and_passed():
    rows = verify_rows(read("en"))
    assert len(rows) >= 20 and set(rows.values()) == {"ok"}
    patterns = verify_name_patterns()
    unnamed = [name for name in rows if not any(p.fullmatch(name) for p in patterns)]
    assert unnamed == [], f"rows that learnpos/verify.py does not produce: {unnamed}"
    summary = verify_output(read("en")).splitlines()[-2:]
    assert re.fullmatch(r"\d+ checks, 0 failed", summary[0]) and summary[1].startswith("all checks passed")


def test_the_pasted_verify_count_is_what_verify_runs_now(verify_checks):
    checks = verify_checks
    assert verify_output(read("en")).splitlines()[-2] == f"{len(checks)} checks, 0 failed"
    assert all(c.ok for c in checks)


def test_both_documents_have_the_same_links():
    en, zh = Counter(links(read("en"))), Counter(links(read("zh")))
    assert en - zh == Counter(), "links only in derivation.md"
    assert zh - en == Counter(), "links only in derivation.zh.md"


def test_formulas_checked_numbers_and_output_are_identical_in_both_documents():
    en, zh = read("en"), read("zh")
    assert formulas(en) == formulas(zh)
    assert len(formulas(en)) >= 20
    assert checked_values(en) == checked_values(zh)
    assert verify_output(en) == verify_output(zh)


def test_every_displayed_formula_points_to_its_code_and_check(lang):
    assert formulas_without_pointers(read(lang)) == []


def test_the_checkers_catch_planted_mistakes():
    doc_path, rows = DOCS["en"], {"table identity arange": "ok"}
    planted = ("[`table_gradient`](../learnpos/reference/layers.py) [`no_such_function`](../learnpos/positional.py)\n"
               "[`gone`](../learnpos/nowhere.py) [`table identity nowhere`](../learnpos/verify.py)\n"
               "[`LearnedPositionalEmbedding.embed`](../learnpos/positional.py) "
               "[`PositionalConfig.no_field`](../learnpos/config/schema.py)\n\n```math\na = b\n```\n\nno pointer here\n"
               "```math\nc = d\n```\n\n[`table_gradient`](../learnpos/reference/layers.py) · "
               "[`table identity arange`](../learnpos/verify.py)\n")
    assert broken_links(planted, doc_path) == ["[gone](../learnpos/nowhere.py): no such file"]
    assert len(unknown_names(planted, doc_path, rows)) == 3  # the function, the verify row, the field
    assert formulas_without_pointers(planted) == ["a = b"]
    assert checked_values("```python\n# checked by tests/test_docs.py\nx, y = 1, [2]\n```\n") == {"x": 1, "y": [2]}


# ------------------------------------------------------------------ the numbers, in NumPy


@pytest.fixture(scope="module")
def values():
    v = checked_values(read("en"))
    assert set(v) == CHECKED_KEYS
    return v


def ids_from_mask(mask: np.ndarray) -> np.ndarray:
    """What learnpos.positional.position_ids_from_mask computes (offset 0), in NumPy."""
    return np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0)


def test_worked_example_table_gradient(values):
    B, T, L, C = values["B"], values["T"], values["L"], values["C"]
    mask, pos, dh, dP = (np.array(values[k]) for k in ("mask", "pos", "dh", "dP"))
    assert mask.shape == pos.shape == (B, T) and dh.shape == (B, T, C) and dP.shape == (L, C)
    assert np.array_equal(ids_from_mask(mask), pos)
    assert np.all(dh[mask == 0] == 0)  # section 4.4: pad slots carry no gradient
    by_loop = np.zeros((L, C))
    for b in range(B):
        for t in range(T):
            by_loop[pos[b, t]] += dh[b, t]
    S = np.zeros((B * T, L))
    S[np.arange(B * T), pos.reshape(-1)] = 1.0  # one-hot selection matrix
    by_matrix = S.T @ dh.reshape(B * T, C)
    by_scatter = np.zeros((L, C))
    np.add.at(by_scatter, pos.reshape(-1), dh.reshape(-1, C))
    for got in (by_loop, by_matrix, by_scatter):
        np.testing.assert_array_equal(got, dP)
    last_write = np.zeros((L, C))
    last_write[pos.reshape(-1)] = dh.reshape(-1, C)  # the bug section 3.2 warns about
    assert not np.array_equal(last_write, dP)
    assert np.all(dP[np.setdiff1d(np.arange(L), pos)] == 0.0)


def test_worked_example_updates(values):
    P0, dP = np.array(values["P0"]), np.array(values["dP"], dtype=float)
    np.testing.assert_allclose(np.array(values["P_sgd"]), P0 - values["sgd_lr"] * dP, rtol=0, atol=1e-12)
    lr, (beta1, beta2), eps, wd = values["adamw_lr"], values["betas"], values["eps"], values["wd"]
    m_hat = (1 - beta1) * dP / (1 - beta1)  # t = 1: bias correction undoes the (1 - beta) factors
    v_hat = (1 - beta2) * dP**2 / (1 - beta2)
    adam = lr * m_hat / (np.sqrt(v_hat) + eps)
    np.testing.assert_allclose(np.array(values["P_adamw_wd0"]), P0 - adam, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.array(values["P_adamw_wd"]), P0 * (1 - lr * wd) - adam, rtol=0, atol=1e-9)
    unused = ~dP.any(axis=1)
    assert np.array_equal(np.array(values["P_adamw_wd0"])[unused], P0[unused])


def adam_first_step_over_lr(t: int, beta1: float, beta2: float) -> float:
    """Step / lr of an element whose moments are zero when its first gradient (|g| >> eps)
    arrives at step t of the tensor's counter (section 7.3)."""
    return (1 - beta1) / (1 - beta1**t) * math.sqrt(1 - beta2**t) / math.sqrt(1 - beta2)


def test_adam_step_formulas(values):
    limit = adam_first_step_over_lr(10**6, 0.9, 0.99)
    assert round(limit, 2) == values["adam_first_step_over_lr"]
    assert round(limit / (1 - 0.9 / math.sqrt(0.99)), 2) == values["adam_single_gradient_total_over_lr"]
    assert round(adam_first_step_over_lr(10**6, 0.9, 0.999), 2) == values["adam_first_step_over_lr_beta2_0999"]
    assert round(adam_first_step_over_lr(1000, 0.9, 0.999), 2) == values["adam_first_step_over_lr_beta2_0999_t1000"]
    assert adam_first_step_over_lr(1, 0.9, 0.99) == pytest.approx(1.0)  # a row used from step 1: alpha


def test_scales_at_init(values, project):
    rng = np.random.default_rng(0)
    C, pairs = 4096, 32

    def mean_cos(sigma_p: float, sigma_e: float) -> float:
        def ln(x):  # LayerNorm at init: gain 1, bias 0
            return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)

        p = rng.normal(0, sigma_p, (pairs, C))
        a, b = ln(p + rng.normal(0, sigma_e, (pairs, C))), ln(p + rng.normal(0, sigma_e, (pairs, C)))
        return float(np.mean((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))

    for key, sigma_p in (("cos_same_position_randn", 1.0), ("cos_same_position_normal", 0.02)):
        predicted = sigma_p**2 / (sigma_p**2 + 0.02**2)
        assert round(predicted, 4) == values[key]
        assert abs(mean_cos(sigma_p, 0.02) - predicted) < 0.01
    assert values["repeat_copy_bytes"] == 64 * 1024 * 768 * 4
    assert round(1 / math.sqrt(2), 4) == values["raw_sinusoid_rms"]
    assert round(project["sinusoid_scale"], 5) == values["sinusoid_scale_for_002"]
    assert project["raw_sinusoid_row_rms_max_dev"] < 1e-12  # every raw row has RMS exactly 1/sqrt(2)
    assert project["scaled_sinusoid_row_rms_max_dev"] < 1e-15  # scaled rows have RMS exactly init_std


# ------------------------------------------------- the numbers, with the project's own code

PROJECT_SCRIPT = textwrap.dedent("""
    import __future__, ast, json, math, sys, types
    from types import SimpleNamespace as NS
    sys.modules["torch"] = None  # any `import torch` now fails: only NumPy code may run
    pkg = sys.argv[1] + "/learnpos"
    stub = types.ModuleType("learnpos"); stub.__path__ = [pkg]  # skip learnpos/__init__ (imports torch)
    sys.modules["learnpos"] = stub
    import numpy as np
    import learnpos.reference as ref
    from learnpos.reference.layers import sinusoid_scale, sinusoid_table
    import tomllib
    from learnpos.config import TrainConfig, _apply_dict, preset_path

    ex = json.loads(sys.argv[2])
    out = {}

    # the worked example through table_gradient, sgd_step and adamw_step
    dh, pos = np.array(ex["dh"], dtype=float), np.array(ex["pos"])
    out["dP"] = ref.table_gradient(dh, pos, ex["L"]).tolist()
    params = {"pos.weight": np.array(ex["P0"], dtype=float)}
    ref.sgd_step(params, {"pos.weight": np.array(out["dP"])}, ex["sgd_lr"])
    out["P_sgd"] = params["pos.weight"].tolist()
    for key, wd in (("P_adamw_wd0", 0.0), ("P_adamw_wd", ex["wd"])):
        params = {"pos.weight": np.array(ex["P0"], dtype=float)}
        ref.adamw_step(params, {"pos.weight": np.array(out["dP"])}, {}, ex["adamw_lr"], tuple(ex["betas"]),
                       ex["eps"], {"pos.weight": wd})
        out[key] = params["pos.weight"].tolist()

    # a rare row: zero for 999 steps, one gradient at step 1000, zero after; row 0 is used every step
    lr, out["adam"] = 1e-3, {}
    for size in (1.0, 1e-4):
        for betas in ((0.9, 0.99), (0.9, 0.999)):
            params, state, first = {"pos.weight": np.zeros((2, 1))}, {}, None
            for step in range(1, 1601):
                g = np.array([[1.0], [size if step == 1000 else 0.0]])
                ref.adamw_step(params, {"pos.weight": g}, state, lr, betas, 1e-8, 0.0)
                if step == 1000:
                    first = -params["pos.weight"][1, 0] / lr
            out["adam"][f"{size} {betas[1]}"] = [first, -params["pos.weight"][1, 0] / lr]

    # decay-only shrink factors with the real schedule (lr_at, compiled from learnpos/optim.py)
    tree = ast.parse(open(pkg + "/optim.py", encoding="utf-8").read())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "lr_at")
    namespace = {"math": math, "TrainConfig": TrainConfig}
    exec(compile(ast.Module([fn], type_ignores=[]), "optim.py", "exec",
                 flags=__future__.annotations.compiler_flag, dont_inherit=True), namespace)
    lr_at = namespace["lr_at"]
    def shrink(overrides):  # the demo preset's train section (the tasks, which import torch, stay out)
        t = TrainConfig()
        _apply_dict(t, tomllib.loads(preset_path("demo").read_text(encoding="utf-8"))["train"], "train.")
        assert all(k.startswith("train.") for k in overrides), overrides
        _apply_dict(t, {k.split(".", 1)[1]: v for k, v in overrides.items()}, "train.")
        return math.prod(1 - lr_at(s, t) * t.weight_decay for s in range(t.max_iters))
    out["demo_decay"] = shrink({})
    out["stats_test_decay"] = shrink(json.loads(sys.argv[3]))

    # sinusoids
    raw = sinusoid_table(np.arange(64), 16)
    scaled = sinusoid_table(np.arange(64), 16, sinusoid_scale(0.02))
    rms = lambda x: np.sqrt((x ** 2).mean(-1))
    out["sinusoid_scale"] = sinusoid_scale(0.02)
    out["raw_sinusoid_row_rms_max_dev"] = float(np.abs(rms(raw) - 1 / math.sqrt(2)).max())
    out["scaled_sinusoid_row_rms_max_dev"] = float(np.abs(rms(scaled) - 0.02).max())

    # pad slots: dL/dh at the embedding sum, from the reference backward
    def model(causal):
        cfg = NS(vocab_size=13, n_layer=2, n_head=2, n_embd=8, bias=True, tie_weights=True, causal=causal,
                 positional=NS(kind="learned", max_len=9, init_std=0.02))
        rng = np.random.default_rng(1)
        params = {}
        for name, shape in ref.parameter_shapes(cfg).items():
            noise = rng.normal(size=shape)
            gain = name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight"))
            params[name] = 1 + 0.1 * noise if gain else (0.1 * noise if len(shape) == 1 else 0.3 * noise)
        params["head.weight"] = params["tok_emb.weight"]
        return cfg, params

    def dh_of(causal, mask, count_pads=False, targets_at=None):
        cfg, params = model(causal)
        rng = np.random.default_rng(2)
        idx, targets = rng.integers(0, 13, mask.shape), rng.integers(0, 13, mask.shape)
        if not count_pads:
            targets = np.where(mask == 1, targets, -100)
        if targets_at is not None:
            targets = np.where(targets_at, targets, -100)
        ids = np.where(mask == 1, np.cumsum(mask, 1) - 1, 0)
        _, _, cache = ref.forward(params, idx, targets, cfg, ids, mask)
        return ref.backward(cache, return_dh=True)[1]

    T = 7
    left = np.array([[1] * T, [0] * 2 + [1] * 5, [0] * 4 + [1] * 3])
    right = left[:, ::-1].copy()
    pads = {}
    for name, causal, mask in (("decoder left", True, left), ("decoder right", True, right),
                               ("encoder left", False, left), ("encoder right", False, right)):
        dh = dh_of(causal, mask)
        pads[name] = [float(np.abs(dh[mask == 0]).max()), float(np.linalg.norm(dh[mask == 1], axis=-1).min())]
    out["pads"] = pads
    out["pads_counted"] = float(np.abs(dh_of(True, left, count_pads=True)[left == 0]).max())
    only_last = np.zeros((3, T), dtype=bool); only_last[:, -1] = True
    out["ignored_but_read"] = float(np.linalg.norm(dh_of(True, np.ones((3, T), int), targets_at=only_last)[:, 0],
                                                   axis=-1).min())
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def project(values):
    example = {k: values[k] for k in ("dh", "pos", "L", "P0", "sgd_lr", "adamw_lr", "betas", "eps", "wd")}
    fast = None  # the overrides test_weight_decay_on_p_moves_rows_that_get_no_gradient trains with
    for node in ast.parse((ROOT / "tests" / "test_train.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FAST":
            fast = ast.literal_eval(node.value)
    assert fast is not None, "FAST overrides not found in tests/test_train.py"
    overrides = {**fast, "train.max_iters": "20"}
    out = subprocess.run([sys.executable, "-c", PROJECT_SCRIPT, str(ROOT), json.dumps(example), json.dumps(overrides)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_worked_example_against_the_projects_code(values, project):
    np.testing.assert_array_equal(np.array(project["dP"]), np.array(values["dP"], dtype=float))
    np.testing.assert_allclose(project["P_sgd"], values["P_sgd"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(project["P_adamw_wd0"], values["P_adamw_wd0"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(project["P_adamw_wd"], values["P_adamw_wd"], rtol=0, atol=1e-9)


def test_adam_moves_a_rare_row_by_a_fixed_multiple_of_lr(values, project):
    adam = project["adam"]
    for size in ("1.0", "0.0001"):  # the size of the one gradient does not matter
        first, total = adam[f"{size} 0.99"]
        assert abs(first - values["adam_first_step_over_lr"]) < 2e-3, (size, first)
        assert abs(total - values["adam_single_gradient_total_over_lr"]) < 0.02, (size, total)
        first_0999 = adam[f"{size} 0.999"][0]  # at t = 1000 the beta2 = 0.999 correction still matters
        # (a gradient of 1e-4 is only ~400 eps above sqrt(v_hat) here, so eps shows at the 0.3 % level)
        assert abs(first_0999 - adam_first_step_over_lr(1000, 0.9, 0.999)) < 0.01, (size, first_0999)
        assert abs(first_0999 - values["adam_first_step_over_lr_beta2_0999_t1000"]) < 0.01


def test_decay_factors_with_the_projects_schedule(values, project):
    assert abs(project["demo_decay"] - values["demo_decay_factor"]) < 5e-5
    assert abs(project["stats_test_decay"] - values["stats_test_decay_factor"]) < 5e-5


def test_pad_slots_get_exactly_zero_gradient_in_the_reference(project):
    """Section 4.4: with pad targets -100 and the mask passed, dL/dh is exactly 0.0 at every
    pad slot (left or right padding, decoder or encoder), while real slots get gradient; and
    the claim can fail: counting the pads' targets puts gradient on them."""
    for name, (at_pads, real_min) in project["pads"].items():
        assert at_pads == 0.0, name
        assert real_min > 0.0, name
    assert project["pads_counted"] > 1e-3
    # section 5: a slot whose own target is ignored still gets gradient when later slots read it
    assert project["ignored_but_read"] > 1e-6
