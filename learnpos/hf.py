"""HF transformers interop: a learnpos language model as a `GPT2LMHeadModel` directory, and a
local GPT-2-style checkpoint directory as a learnpos run.

    export_hf(run_dir, out)      config.json + model.safetensors (+ tokenizer files), loadable
                                 with `GPT2LMHeadModel.from_pretrained(out)` and
                                 `AutoTokenizer.from_pretrained(out)`
    import_hf(hf_dir, run_dir)   config.json, checkpoints/step-00000000/ and tokenizer.json:
                                 what `generate`, `eval`, `inspect` and `train --resume` read

The two models are the same function: GPT-2 is pre-LN with a learned position table added
to the token embedding, fused qkv, tanh GELU ("gelu_new"), LayerNorm eps 1e-5, and a head
tied to the token embedding. The only layout difference is that GPT-2's `Conv1D` stores
each weight as (in, out), the transpose of `nn.Linear`. A model without biases exports
zero biases (the same function). What GPT-2 cannot represent (another positional encoding,
randomized positions, named tables, an encoder, a task's own head) is refused by name.

Above the model and the run directory, below the CLI; needs the optional extra `hf`.
Only safetensors weights are read (never a pickle).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from learnpos.config import Config, load_config, mlp_width
from learnpos.data.tokenizers import TOKENIZER_FILE, CharTokenizer, load_tokenizer
from learnpos.errors import ConfigError, DataError, RunDirError
from learnpos.files import folder_contents, fsync_dir, loads_json, lock_dir
from learnpos.load import build_model, load_run
from learnpos.optim import build_optimizer
from learnpos.runs import (
    MODEL_FILE,
    STATE_FILE,
    check_shapes,
    save_trainer_state,
    save_weights,
    weight_shapes,
    write_checkpoint,
    write_config,
)

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which learnpos uses; GPT-2's layer_norm_epsilon
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # the tanh approximation learnpos's MLP uses


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("HF interop needs the transformers package: pip install 'learnpos[hf]'") from None
    return transformers


def _conv1d(layer: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear (out, in) -> GPT-2 Conv1D weight (in, out) and bias (zeros without one)."""
    w = layer.weight.detach().t().contiguous()
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[1])
    return w, b.clone()


def _norm(ln: torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    b = ln.bias.detach() if ln.bias is not None else torch.zeros_like(ln.weight)
    return ln.weight.detach().clone(), b.clone()


def exportable(cfg: Config, model) -> None:
    """Raise ConfigError naming the first setting a GPT2LMHeadModel cannot represent."""
    m, p = cfg.model, cfg.model.positional
    problems = []
    if cfg.task != "lm":
        problems.append(f"task '{cfg.task}' (only language models, task lm, are GPT-2 models)")
    if p.kind != "learned":
        problems.append(f"model.positional.kind='{p.kind}' (GPT-2 has a learned position table only)")
    elif p.randomize:
        problems.append("model.positional.randomize=true (GPT-2 reads positions 0..T-1 in order)")
    if m.tables:
        problems.append(f"model.tables ({', '.join(t.name for t in m.tables)}): GPT-2 adds no named tables")
    if not m.causal:
        problems.append("model.causal=false (GPT-2 is a decoder)")
    if m.mlp != "gelu" or mlp_width(m) != 4 * m.n_embd:
        problems.append(f"model.mlp='{m.mlp}', mlp_hidden={m.mlp_hidden} (GPT-2's MLP is gelu, 4 x n_embd wide)")
    if len(model.heads):
        problems.append(f"the task's own heads ({', '.join(model.heads.keys())})")
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) and module.eps != LN_EPS:
            problems.append(f"{name} has LayerNorm eps {module.eps}, not {LN_EPS}")
            break
    if problems:
        raise ConfigError(f"cannot export to GPT-2: {problems[0]}")


def gpt2_state_dict(model) -> dict[str, torch.Tensor]:
    """learnpos GPT weights under GPT2LMHeadModel's names and layouts."""
    sd = {"transformer.wte.weight": model.tok_emb.weight.detach().clone(),
          "transformer.wpe.weight": model.pos.weight.detach().clone()}
    for i, block in enumerate(model.blocks):
        h = f"transformer.h.{i}"
        sd[f"{h}.ln_1.weight"], sd[f"{h}.ln_1.bias"] = _norm(block.ln1)
        sd[f"{h}.attn.c_attn.weight"], sd[f"{h}.attn.c_attn.bias"] = _conv1d(block.attn.qkv)
        sd[f"{h}.attn.c_proj.weight"], sd[f"{h}.attn.c_proj.bias"] = _conv1d(block.attn.proj)
        sd[f"{h}.ln_2.weight"], sd[f"{h}.ln_2.bias"] = _norm(block.ln2)
        sd[f"{h}.mlp.c_fc.weight"], sd[f"{h}.mlp.c_fc.bias"] = _conv1d(block.mlp.fc)
        sd[f"{h}.mlp.c_proj.weight"], sd[f"{h}.mlp.c_proj.bias"] = _conv1d(block.mlp.proj)
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = _norm(model.ln_f)
    sd["lm_head.weight"] = model.head.weight.detach().clone()
    return sd


def gpt2_config(cfg: Config, transformers):
    m = cfg.model
    rate = lambda own: m.dropout if own is None else own  # noqa: E731
    return transformers.GPT2Config(
        vocab_size=m.vocab_size, n_positions=m.positional.max_len + m.positional.offset, n_embd=m.n_embd,
        n_layer=m.n_layer, n_head=m.n_head, n_inner=4 * m.n_embd, activation_function="gelu_new",
        layer_norm_epsilon=LN_EPS,
        resid_pdrop=rate(m.resid_dropout), embd_pdrop=rate(m.embd_dropout), attn_pdrop=rate(m.attn_dropout),
        tie_word_embeddings=m.tie_weights, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _hf_tokenizer(tokenizer, transformers):
    """The run's tokenizer as a PreTrainedTokenizerFast: byte-level BPE as it is; a character
    tokenizer as a word-level vocabulary over single characters (same ids, same text)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if tokenizer.kind == "bpe":
        tok = Tokenizer.from_str(tokenizer.tok.to_str())  # a copy: the wrapper may set padding on it
    else:
        unk = "\ufffd" if "\ufffd" not in tokenizer.index else "\ufffe"
        vocab = {**tokenizer.index, unk: len(tokenizer.chars)}  # WordLevel needs an unknown token
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def export_hf(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run's model (best weights where it kept them) as a GPT2LMHeadModel directory."""
    transformers = _transformers()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(f"{out} already exists and is not empty; choose a new directory for the export")
    model, cfg, task = load_run(run_dir)
    exportable(cfg, model)
    quiet = getattr(getattr(transformers.utils, "logging", None), "disable_progress_bar", None)
    if quiet is not None:
        quiet()  # no "Writing model shards" bar on stderr after the command's own line
    hf = transformers.GPT2LMHeadModel(gpt2_config(cfg, transformers))
    missing, unexpected = hf.load_state_dict(gpt2_state_dict(model), strict=False)
    if unexpected or [k for k in missing if not k.endswith(".attn.bias") and k != "lm_head.weight"]:
        raise RuntimeError(f"GPT-2 layout mismatch: missing {missing}, unexpected {unexpected}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer = getattr(task, "tokenizer", None)
        if tokenizer is not None:
            _hf_tokenizer(tokenizer, transformers).save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    return out


# ------------------------------------------------------------------------------ import


def _read_hf_config(hf_dir: Path) -> dict:
    path = hf_dir / "config.json"
    if not path.exists():
        raise DataError(f"{hf_dir} has no config.json: give a local GPT-2 checkpoint directory "
                        f"(as written by save_pretrained)")
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not JSON ({e})") from None
    if not isinstance(conf, dict) or conf.get("model_type") != "gpt2":
        kind = conf.get("model_type") if isinstance(conf, dict) else None
        raise DataError(f"{path}: model_type is {kind!r}; only GPT-2 checkpoints (model_type 'gpt2') can be imported")
    return conf


def _importable(conf: dict, path: Path) -> None:
    checks = [
        (conf.get("activation_function", "gelu_new") in TANH_GELUS,
         f"activation_function={conf.get('activation_function')!r} (learnpos's MLP is the tanh GELU, gelu_new)"),
        (abs(conf.get("layer_norm_epsilon", LN_EPS) - LN_EPS) == 0,
         f"layer_norm_epsilon={conf.get('layer_norm_epsilon')} (learnpos's LayerNorm has eps {LN_EPS})"),
        (conf.get("n_inner") in (None, 4 * conf.get("n_embd", 768)), f"n_inner={conf.get('n_inner')} (learnpos's "
         f"MLP is 4 x n_embd)"),
        (conf.get("scale_attn_weights", True), "scale_attn_weights=false"),
        (not conf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true"),
        (not conf.get("add_cross_attention", False), "add_cross_attention=true"),
    ]
    for ok, what in checks:
        if not ok:
            raise ConfigError(f"cannot import {path}: {what} has no learnpos equivalent")


def _from_gpt2(sd: dict, n_layer: int, tied: bool, transpose=lambda w: w.t().contiguous()) -> dict:
    """GPT2LMHeadModel names and layouts -> learnpos state_dict keys. `sd` holds tensors, or
    shapes (with `transpose` reversing a shape) to check a file's header before loading it."""
    get = lambda k: sd.get(k, sd.get(k.removeprefix("transformer.")))  # noqa: E731  (GPT2Model files lack the prefix)
    out = {"tok_emb.weight": get("transformer.wte.weight"), "pos.weight": get("transformer.wpe.weight"),
           "ln_f.weight": get("transformer.ln_f.weight"), "ln_f.bias": get("transformer.ln_f.bias")}
    for i in range(n_layer):
        h, b = f"transformer.h.{i}", f"blocks.{i}"
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[f"{b}.{ours}.weight"], out[f"{b}.{ours}.bias"] = get(f"{h}.{theirs}.weight"), get(f"{h}.{theirs}.bias")
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                             ("mlp.proj", "mlp.c_proj")):
            w = get(f"{h}.{theirs}.weight")
            out[f"{b}.{ours}.weight"] = None if w is None else transpose(w)
            out[f"{b}.{ours}.bias"] = get(f"{h}.{theirs}.bias")
    if not tied:
        out["head.weight"] = sd.get("lm_head.weight")
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise DataError(f"the checkpoint lacks {len(missing)} GPT-2 weight(s), e.g. {missing[0]}")
    return out


def import_hf(hf_dir: str | Path, run_dir: str | Path, overrides: dict[str, str] | None = None) -> Path:
    """Make a learnpos run (task lm, step 0) from a local GPT-2 directory: config.json,
    model.safetensors and tokenizer.json (a byte-level BPE, as GPT-2's). `overrides`
    (e.g. lm.data, lm.block_size, train.*) are applied to the run's config, so the run can
    be fine-tuned with `learnpos train --resume RUN`."""
    from safetensors.torch import load_file

    from learnpos.tasks import build_task

    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    conf = _read_hf_config(hf_dir)
    weights = hf_dir / "model.safetensors"
    if not weights.exists():
        raise DataError(f"{hf_dir} has no model.safetensors (only safetensors are read, never a pickle); "
                        f"save it with save_pretrained(..., safe_serialization=True)")
    if not (hf_dir / TOKENIZER_FILE).exists():
        raise DataError(f"{hf_dir} has no {TOKENIZER_FILE}; save the tokenizer with tokenizer.save_pretrained(DIR)")
    if run_dir.exists() and (not run_dir.is_dir() or folder_contents(run_dir)):
        raise RunDirError(f"{run_dir} already exists and is not empty; choose a new run directory")
    shapes = _header_shapes(weights)
    _check_sizes(conf, shapes, weights)  # the sizes first: the weights decide them, not config.json
    _importable(conf, hf_dir)
    tokenizer = _hf_dir_tokenizer(hf_dir / TOKENIZER_FILE)

    n_positions = int(conf.get("n_positions", conf.get("n_ctx", 1024)))
    base = {"task": "lm", "model.vocab_size": str(conf["vocab_size"]), "model.n_layer": str(conf["n_layer"]),
            "model.n_head": str(conf["n_head"]), "model.n_embd": str(conf["n_embd"]), "model.bias": "true",
            "model.causal": "true", "model.tie_weights": str(bool(conf.get("tie_word_embeddings", True))).lower(),
            "model.dropout": str(conf.get("resid_pdrop", 0.1)), "model.embd_dropout": str(conf.get("embd_pdrop", 0.1)),
            "model.attn_dropout": str(conf.get("attn_pdrop", 0.1)), "model.positional.kind": "learned",
            "model.positional.max_len": str(n_positions), "lm.tokenizer": tokenizer.kind,
            "lm.bpe_vocab_size": str(max(tokenizer.vocab_size, 257)), "lm.block_size": str(min(n_positions, 256)),
            "train.out_dir": str(run_dir), "train.warmup_iters": "0"}
    if (overrides or {}).get("task", "lm") != "lm":
        raise ConfigError("an imported GPT-2 is a language model: task lm")
    cfg = load_config(None, {**base, **(overrides or {})})
    if cfg.lm.data:
        cfg.lm.data = os.path.abspath(cfg.lm.data)

    with lock_dir(run_dir, "RUN_DIR") as lock:
        if folder_contents(run_dir):  # made by another process meanwhile
            raise RunDirError(f"{run_dir} already exists and is not empty; choose a new run directory")
        try:
            tokenizer.save(run_dir / TOKENIZER_FILE)
            task = build_task(cfg, run_dir)
            if cfg.model.vocab_size < task.vocab_size:
                raise DataError(f"{hf_dir}: the tokenizer has {task.vocab_size} tokens but the model only "
                                f"vocab_size={cfg.model.vocab_size}")
            tied = cfg.model.tie_weights
            with torch.device("meta"):  # every tensor's shape checked against the header before allocating
                expected = {k: tuple(v.shape) for k, v in build_model(cfg, task).state_dict().items()}
            try:
                check_shapes(expected, _from_gpt2(shapes, cfg.model.n_layer, tied, lambda s: tuple(reversed(s))),
                             weights, {"head.weight"} if tied else set())
            except RunDirError as e:
                raise DataError(str(e)) from None
            torch.manual_seed(cfg.train.seed)
            model = build_model(cfg, task)
            model.load_state_dict(_from_gpt2(load_file(weights), cfg.model.n_layer, tied), strict=False)
            write_config(run_dir, cfg.to_json() + "\n")
            optimizer = build_optimizer(model, cfg.train, "cpu")
            write_checkpoint(run_dir, 0, {MODEL_FILE: lambda p: save_weights(p, model, 0),
                                          STATE_FILE: lambda p: save_trainer_state(p, optimizer, 0)})
        except BaseException:
            lock.discard_written()
            raise
    return run_dir


def _header_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    try:
        return weight_shapes(weights)[0]
    except RunDirError as e:
        raise DataError(str(e)) from None


def _check_sizes(conf: dict, shapes: dict[str, tuple[int, ...]], weights: Path) -> None:
    """DataError unless the sizes config.json names are those of the weights (read from the
    safetensors header): a config is not trusted to size what gets allocated."""
    get = lambda k: shapes.get(k, shapes.get(k.removeprefix("transformer.")))  # noqa: E731
    wte, wpe = get("transformer.wte.weight"), get("transformer.wpe.weight")
    if wte is None or wpe is None or len(wte) != 2 or len(wpe) != 2:
        raise DataError(f"{weights} has no GPT-2 token and position tables (transformer.wte, transformer.wpe)")
    layers = {parts[parts.index("h") + 1] for parts in (k.split(".") for k in shapes)
              if "h" in parts[:-1] and parts[parts.index("h") + 1].isdigit()}
    n_positions = conf.get("n_positions", conf.get("n_ctx", 1024))
    for name, said, found in (("vocab_size", conf.get("vocab_size"), wte[0]), ("n_embd", conf.get("n_embd"), wte[1]),
                              ("n_positions", n_positions, wpe[0]), ("n_layer", conf.get("n_layer"), len(layers))):
        if said != found:
            raise DataError(f"{weights.parent / 'config.json'} says {name}={said!r} but {weights.name} holds "
                            f"{found}: the config and the weights do not belong together")
    if not isinstance(conf.get("n_head"), int) or conf["n_head"] <= 0:
        raise DataError(f"{weights.parent / 'config.json'}: n_head={conf.get('n_head')!r} is not a positive integer")


def _hf_dir_tokenizer(path: Path):
    """The tokenizer of an HF directory as learnpos's: byte-level BPE as it is; the one-token-
    per-character vocabulary `export_hf` writes for a character run (plus its unknown token)
    back into a character tokenizer, so export and import close the round trip."""
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None  # load_tokenizer names the problem
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, dict) and model.get("type") == "WordLevel":
        vocab, unk = model.get("vocab") or {}, model.get("unk_token")
        chars = [c for c, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if c != unk]
        if not (chars and all(isinstance(c, str) and len(c) == 1 for c in chars)
                and sorted(vocab[c] for c in chars) == list(range(len(chars)))):
            raise DataError(f"{path} is a word-level tokenizer that is not one token per character; learnpos "
                            f"imports byte-level BPE and character tokenizers")
        return CharTokenizer(chars)
    return load_tokenizer(path)
