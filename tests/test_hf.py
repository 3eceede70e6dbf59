"""HF transformers interop: GPT-2 directories in and out give the same function, the same
position-table gradient, the same tokens and the same greedy continuation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import run_cli
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from learnpos.config import load_config
from learnpos.data.tokenizers import BPETokenizer
from learnpos.errors import ConfigError
from learnpos.hf import export_hf, import_hf
from learnpos.load import load_run
from learnpos.model import cross_entropy
from learnpos.positional import position_ids_from_mask
from learnpos.train import train

transformers.logging.set_verbosity_error()
WORDS = "the king and queen of a land by the sea sing to their old dog while rain falls on stone".split()
# float32 against float32 with the same operations in another arrangement (Conv1D's addmm
# against Linear, HF's attention against SDPA): a few ulp per layer. 1e-5 is the bound;
# on these sizes the logits differ by 6e-8 and the position-table gradients by 6e-8 of their
# largest entry, so a wrong layout (a transposed weight, a dropped bias) cannot pass
TOL = 1e-5


def _text(n_words: int = 3000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n_words // 7)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "text.txt"
    path.write_text(_text(), encoding="utf-8")
    return path


def _lm_run(out: Path, data: Path, tokenizer: str = "char", **over) -> Path:
    o = {"lm.data": str(data), "lm.tokenizer": tokenizer, "lm.bpe_vocab_size": "300", "lm.block_size": "24",
         "model.positional.max_len": "32", "model.n_layer": "2", "model.n_head": "2", "model.n_embd": "32",
         "train.max_iters": "30", "train.warmup_iters": "5", "train.eval_interval": "30", "train.batch_size": "8",
         "train.device": "cpu", "train.out_dir": str(out), **over}
    train(load_config("shakespeare-char", o), quiet=True)
    return out


def _hf_gpt2_dir(out: Path, tied: bool) -> Path:
    """A randomly initialised GPT-2 of an unusual shape (3 heads of 8, 3 layers, 19 positions, a
    vocabulary padded past its tokenizer's), with a byte-level BPE tokenizer, saved as HF does."""
    tok = BPETokenizer.train(_text(800, seed=1), 290)
    conf = GPT2Config(vocab_size=301, n_positions=19, n_embd=24, n_layer=3, n_head=3, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied, bos_token_id=None,
                      eos_token_id=None)
    torch.manual_seed(3)
    model = GPT2LMHeadModel(conf)
    with torch.no_grad():  # biases and LayerNorms away from their init, so a dropped one would show
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok.tok).save_pretrained(out)
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_an_imported_gpt2_gives_hf_logits_and_position_gradient(tmp_path, tied):
    hf_dir = _hf_gpt2_dir(tmp_path / "hf", tied)
    run = import_hf(hf_dir, tmp_path / "run")
    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ours, cfg, task = load_run(run)
    assert cfg.model.tie_weights is tied and cfg.model.positional.max_len == 19
    idx = torch.randint(0, 301, (3, 19), generator=torch.Generator().manual_seed(0))
    out = hf(idx, labels=idx)
    logits = ours(idx).logits
    assert (logits - out.logits).abs().max().item() < TOL
    cross_entropy(logits[:, :-1], idx[:, 1:]).backward()  # HF's loss: shift by one inside
    out.loss.backward()
    theirs = hf.transformer.wpe.weight.grad
    assert (ours.pos.weight.grad - theirs).abs().max().item() < TOL * theirs.abs().max().item()
    text = "the old dog sings"
    assert task.tokenizer.encode(text) == AutoTokenizer.from_pretrained(hf_dir).encode(text)


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_an_export_loads_in_hf_with_the_same_logits_tokens_and_greedy_continuation(tmp_path, corpus, tokenizer):
    run = _lm_run(tmp_path / "run", corpus, tokenizer)
    out = export_hf(run, tmp_path / "gpt2")
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    ours, cfg, task = load_run(run)
    text = "the queen sings by the sea"
    ids = task.tokenizer.encode(text)
    assert hf_tok.encode(text) == ids and hf_tok.decode(ids) == text
    x = torch.tensor([ids])
    assert (ours(x).logits - hf(x).logits).abs().max().item() < TOL
    prompt = ids[:8]
    ours_new = ours.generate([prompt], 16, temperature=0)[0]
    hf_new = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)[0, len(prompt):]
    assert ours_new == hf_new.tolist()


def test_a_left_padded_batch_gives_the_same_logits_on_both_sides(tmp_path):
    """Each side with its usual inputs: HF GPT-2 with attention_mask and the position_ids its
    documentation derives from the mask; learnpos with attention_mask and position_ids_from_mask."""
    hf_dir = _hf_gpt2_dir(tmp_path / "hf", tied=True)
    ours, _, _ = load_run(import_hf(hf_dir, tmp_path / "run"))
    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    g = torch.Generator().manual_seed(1)
    lengths = [19, 11, 4]
    idx = torch.zeros(3, 19, dtype=torch.long)
    mask = torch.zeros(3, 19, dtype=torch.long)
    for row, n in enumerate(lengths):
        idx[row, 19 - n:] = torch.randint(0, 290, (n,), generator=g)
        mask[row, 19 - n:] = 1
    hf_pos = (mask.cumsum(-1) - 1).clamp(min=0)
    theirs = hf(idx, attention_mask=mask, position_ids=hf_pos).logits
    mine = ours(idx, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    real = mask.bool()
    assert (mine[real] - theirs[real]).abs().max().item() < TOL
    alone = ours(idx[2:, 19 - 4:]).logits[0]  # and a padded row is what its tokens give alone
    assert (mine[2, 19 - 4:] - alone).abs().max().item() < TOL


def test_settings_gpt2_cannot_represent_refuse_export_by_name(tmp_path, corpus):
    rope = _lm_run(tmp_path / "rope", corpus, **{"model.positional.kind": "rope", "train.max_iters": "2",
                                                 "train.eval_interval": "2", "train.warmup_iters": "0"})
    with pytest.raises(ConfigError, match="model.positional.kind='rope'"):
        export_hf(rope, tmp_path / "x")
    rnd = _lm_run(tmp_path / "rnd", corpus, **{"model.positional.randomize": "true", "train.max_iters": "2",
                                               "train.eval_interval": "2", "train.warmup_iters": "0"})
    with pytest.raises(ConfigError, match="randomize=true"):
        export_hf(rnd, tmp_path / "x")
    glu = _lm_run(tmp_path / "glu", corpus, **{"model.mlp": "swiglu", "train.max_iters": "2",
                                               "train.eval_interval": "2", "train.warmup_iters": "0"})
    with pytest.raises(ConfigError, match="model.mlp='swiglu'"):
        export_hf(glu, tmp_path / "x")
    demo = tmp_path / "demo"
    train(load_config("demo", {"train.max_iters": "2", "train.warmup_iters": "0", "train.eval_interval": "2",
                               "train.out_dir": str(demo)}), quiet=True)
    with pytest.raises(ConfigError, match="task 'reverse'"):
        export_hf(demo, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_an_imported_gpt2_fine_tunes_generates_and_refuses_unsupported_configs(tmp_path, corpus):
    hf_dir = _hf_gpt2_dir(tmp_path / "hf", tied=True)
    r = run_cli("import-hf", hf_dir, tmp_path / "run", "--data", corpus, "--lm.block_size=16", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--resume", tmp_path / "run", "--train.max_iters=6", "--train.eval_interval=6",
                "--train.batch_size=4", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["split"] == "val"] == [6]
    r = run_cli("generate", "--run", tmp_path / "run", "--prompt", "the king", "--max-new-tokens", "5", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("the king"), r.stderr

    conf = json.loads((hf_dir / "config.json").read_text())
    for key, value, named in (("activation_function", "relu", "activation_function='relu'"),
                              ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon=1e-06"),
                              ("model_type", "llama", "model_type is 'llama'")):
        (hf_dir / "config.json").write_text(json.dumps({**conf, key: value}))
        r = run_cli("import-hf", hf_dir, tmp_path / f"bad-{key}", cwd=tmp_path)
        assert r.returncode == 2 and named in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / f"bad-{key}").exists()
