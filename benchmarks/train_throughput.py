"""Training tokens/s of learnpos `GPT` vs HF transformers `GPT2LMHeadModel`, side by side.

    python benchmarks/train_throughput.py [--json] [--configs small,large] [--repeats 7]
        [--iters N] [--threads 0] [--precisions default,float32] [--compile]
        [--hf-activation gelu_new|gelu_pytorch_tanh] [--profile]

Both models get the identical config (n_layer, n_head, n_embd, block = n_positions, vocab,
every dropout 0, tied head, SDPA attention), the same weights, the same batch, the same loss
(mean cross-entropy over every position, logits upcast to fp32) and the same training step:

    forward + loss -> backward -> clip_grad_norm_(1.0) -> AdamW step -> zero_grad(set_to_none)

Activation: both compute GPT-2's tanh GELU. HF runs it as its GPT2Config default does
(`gelu_new`, eight element-wise ops); `--hf-activation gelu_pytorch_tanh` gives HF the one
fused PyTorch kernel learnpos uses, to see how much of the ratio that accounts for.

AdamW: learnpos builds its optimizer with `learnpos.optim.build_optimizer` (what `train`
does); HF gets the same groups (decay on matrices except the position table), lr, betas,
weight decay and the same fused/foreach setting, so the optimizer costs the same on both
sides and the ratio measures the models.

Memory: each line also reports the minor page faults one step takes (first touches of memory
the allocator had returned to the OS). With glibc's default malloc HF's step takes tens of
thousands at the large config and learnpos's none; that is part of what the ratio measures.
`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296`
in the environment removes them for both sides, to compare without that effect.

Precision: `default` is what learnpos trains in on this CPU by default (`train.dtype=auto`,
read from `learnpos.hardware.autocast_for`); both sides then run in it. float32 is always
reported too (`ratio_vs_hf_float32`), so a bf16-vs-bf16 ratio never hides behind a
precision difference. Timing: contenders alternate in the same process, `--repeats`
rounds of `--iters` steps each; figures are medians, ratios the median of per-round
ratios (HF ms / learnpos ms, > 1 = learnpos faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common as C
import torch
import torch.nn.functional as F

from learnpos.config import TrainConfig
from learnpos.optim import build_optimizer

LR, BETAS, WEIGHT_DECAY, CLIP = 1e-3, (0.9, 0.99), 0.1, 1.0
DEFAULT_ITERS = {"small": 10, "large": 2}


def hf_optimizer(hf, like: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """AdamW for HF with learnpos's groups and settings (position table `wpe` not decayed)."""
    decay, no_decay, positions = [], [], []
    for name, p in hf.named_parameters():  # the tied lm_head is listed once, as wte
        (positions if name.endswith("wpe.weight") else decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0},
              {"params": positions, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=like.defaults.get("fused"),
                             foreach=like.defaults.get("foreach"))


def make_steps(spec: dict, precision: str, compile_lp: bool, seed: int = 0, hf_activation: str = "gelu_new"):
    """Build both models (same weights) and return their one-step closures plus a state dict."""
    torch.manual_seed(seed)
    lp = C.learnpos_gpt(spec)
    hf = C.hf_gpt2(spec, hf_activation)
    C.copy_to_hf(lp, hf)
    diff = C.max_logit_diff(lp, hf, spec)
    if diff > 1e-4:
        raise SystemExit(f"weight copy failed: learnpos and HF logits differ by {diff:.2e}")
    lp.train()
    hf.train()
    t = TrainConfig(lr=LR, beta1=BETAS[0], beta2=BETAS[1], weight_decay=WEIGHT_DECAY, grad_clip=CLIP)
    lp_opt = build_optimizer(lp, t, device_type="cpu")
    hf_opt = hf_optimizer(hf, lp_opt)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, spec["vocab"], (spec["batch"], spec["block"]), generator=g)
    y = torch.randint(0, spec["vocab"], (spec["batch"], spec["block"]), generator=g)
    autocast = C.autocast_ctx(precision)
    forward = torch.compile(lp) if compile_lp else lp
    last = {}

    def lp_step() -> None:
        with autocast():
            loss = forward(x, targets=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lp.parameters(), CLIP)
        lp_opt.step()
        lp_opt.zero_grad(set_to_none=True)
        last["learnpos"] = loss.detach()

    def hf_step() -> None:
        with autocast():
            logits = hf(input_ids=x, use_cache=False).logits  # no KV cache to fill while training
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        last["hf"] = loss.detach()

    return lp_step, hf_step, last, lp_opt


OP_FAMILIES = {  # torch.profiler op name -> family, for --profile
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "gelu": ("aten::gelu", "aten::gelu_backward"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
                  "aten::_softmax", "aten::_softmax_backward_data"),
    "layer_norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "copy": ("aten::copy_",),
}


def step_profile(step, steps: int = 2) -> dict[str, float]:
    """Share of self CPU time per op family over `steps` steps; the rest is `other` (for HF's
    default activation, its eight GELU ops land there)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(self_us.values())
    shares = {fam: sum(self_us.get(op, 0) for op in ops) / total for fam, ops in OP_FAMILIES.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return {k: round(v, 3) for k, v in shares.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--configs", default="small,large")
    ap.add_argument("--repeats", type=int, default=7, help="alternating rounds per contender")
    ap.add_argument("--iters", type=int, default=0, help="steps per round (0 = 10 small, 2 large)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--precisions", default="default,float32",
                    help="comma list of default|float32|bfloat16 (default = learnpos's CPU default)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the learnpos model (train.compile)")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, print where one step's CPU time goes (torch.profiler, by op family)")
    ap.add_argument("--hf-activation", default="gelu_new", choices=["gelu_new", "gelu_pytorch_tanh"],
                    help="how HF computes GPT-2's tanh GELU: its default (gelu_new) or one fused kernel")
    args = ap.parse_args()

    C.set_threads(args.threads)
    default = C.default_cpu_precision()
    precisions = list(dict.fromkeys(default if p == "default" else p for p in args.precisions.split(",")))
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}")
    print(f"# learnpos default training precision on this CPU: "
          f"{'bf16 autocast' if default == 'bfloat16' else 'float32'} (train.dtype=auto); "
          f"both sides run in each precision listed")

    result: dict = {"threads": torch.get_num_threads(), "default_precision": default, "compile": args.compile,
                    "hf_activation": args.hf_activation,
                    "by_precision": {}}
    for precision in precisions:
        per: dict = {"ratio_vs_hf": {}, "ms_per_iter": {"learnpos": {}, "hf": {}},
                     "tokens_per_s": {"learnpos": {}, "hf": {}}}
        for name in args.configs.split(","):
            spec = C.CONFIGS[name]
            lp_step, hf_step, last, lp_opt = make_steps(spec, precision, args.compile,
                                                        hf_activation=args.hf_activation)
            compile_s = None
            if args.compile:
                t0 = time.perf_counter()
                lp_step()
                compile_s = time.perf_counter() - t0
                per.setdefault("compile_s", {})[name] = round(compile_s, 1)
            iters = args.iters or DEFAULT_ITERS[name]
            times = C.interleaved({"learnpos": lp_step, "hf": hf_step}, args.repeats, iters)
            tokens = spec["batch"] * spec["block"]
            ratio = C.median_ratio(times["hf"], times["learnpos"])
            per["ratio_vs_hf"][name] = round(ratio, 3)
            faults = {side: C.minor_faults_per_call(fn) for side, fn in (("learnpos", lp_step), ("hf", hf_step))}
            for side in ("learnpos", "hf"):
                ms = statistics.median(times[side])
                per["ms_per_iter"][side][name] = round(ms, 2)
                per["tokens_per_s"][side][name] = round(tokens / ms * 1e3, 1)
                per.setdefault("page_faults_per_iter", {}).setdefault(side, {})[name] = faults[side]
            print(f"train {name:5s} {precision:8s} learnpos {per['ms_per_iter']['learnpos'][name]:8.2f} ms/iter "
                  f"({per['tokens_per_s']['learnpos'][name]:8.0f} tok/s)  HF {per['ms_per_iter']['hf'][name]:8.2f} "
                  f"ms/iter  ratio {ratio:.3f}x  [{args.repeats}x{iters} steps; loss lp "
                  f"{last['learnpos'].item():.4f} hf {last['hf'].item():.4f}; AdamW fused="
                  f"{lp_opt.defaults.get('fused')}; page faults/iter lp {faults['learnpos']} hf {faults['hf']}"
                  + (f"; compile {compile_s:.1f} s" if compile_s else "") + "]",
                  flush=True)
            if args.profile:
                for side, fn in (("learnpos", lp_step), ("hf", hf_step)):
                    shares = step_profile(fn)
                    per.setdefault("profile_shares", {}).setdefault(side, {})[name] = shares
                    print(f"  profile {side:8s} " + "  ".join(f"{k} {v:.0%}" for k, v in shares.items()), flush=True)
        per["min_ratio_vs_hf"] = min(per["ratio_vs_hf"].values())
        result["by_precision"][precision] = per

    main_p = default if default in result["by_precision"] else precisions[0]
    result.update({"precision": main_p, **{k: result["by_precision"][main_p][k] for k in
                                           ("ratio_vs_hf", "min_ratio_vs_hf", "ms_per_iter", "tokens_per_s")}})
    for p, per in result["by_precision"].items():
        result[f"ratio_vs_hf_{p}"] = per["ratio_vs_hf"]
    print(f"train_throughput: precision {main_p}, ratio vs HF {result['ratio_vs_hf']} "
          f"(min {result['min_ratio_vs_hf']:.3f}); {C.thread_note()}")
    C.emit(args.json, result)


if __name__ == "__main__":
    main()
