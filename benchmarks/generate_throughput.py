"""Cached greedy generation tokens/s: learnpos `model.generate` vs HF `generate`, side by side.

    python benchmarks/generate_throughput.py [--json] [--configs small,large] [--batches 1,8]
        [--prompt-len 16] [--new-tokens 0] [--repeats 7] [--threads 0]

Both models hold the same weights (learnpos's, copied into `GPT2LMHeadModel`; the copy is
checked first: logits on a random input must agree within 1e-4). Both decode greedily
with a KV cache (HF: `do_sample=False, use_cache=True`, no EOS so every row runs the full
length) for the same prompts and `max_new_tokens`, in fp32 under `torch.inference_mode`.
The generated tokens are compared as a check of the setup. Tokens/s counts new tokens
over all rows (batch x new tokens / wall time of one generate call, prefill included).
Contenders alternate in one process; figures are medians over `--repeats` rounds and
each ratio is the median of per-round ratios (HF time / learnpos time, > 1 = learnpos faster).
"""

from __future__ import annotations

import argparse
import statistics

import _common as C
import torch


def contenders(lp, hf, prompts: torch.Tensor, new: int, out: dict):
    """One greedy generate call per side; each stores its new tokens (lists of ids) in `out`."""

    def run_lp() -> None:
        out["learnpos"] = lp.generate(prompts, new, temperature=0)

    def run_hf() -> None:
        with torch.inference_mode():
            # explicit all-ones mask: HF would otherwise infer one from pad_token_id
            # and hide every real token that happens to have that id
            seq = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
        out["hf"] = seq[:, prompts.shape[1]:].tolist()

    return run_lp, run_hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--configs", default="small,large")
    ap.add_argument("--batches", default="1,8", help="comma list of batch sizes")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=0, help="0 = fill the block (block - prompt length)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    args = ap.parse_args()

    C.set_threads(args.threads)
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; fp32, greedy, KV cache")
    result: dict = {"threads": torch.get_num_threads(), "ratio_vs_hf": {}, "tokens_per_s": {"learnpos": {}, "hf": {}},
                    "tokens_match": {}}
    for name in args.configs.split(","):
        spec = C.CONFIGS[name]
        torch.manual_seed(0)
        lp = C.learnpos_gpt(spec).eval()
        hf = C.hf_gpt2(spec).eval()
        C.copy_to_hf(lp, hf)
        diff = C.max_logit_diff(lp, hf, spec)
        if diff > 1e-4:
            raise SystemExit(f"weight copy failed: learnpos and HF logits differ by {diff:.2e}")
        new = args.new_tokens or spec["block"] - args.prompt_len
        for B in (int(b) for b in args.batches.split(",")):
            g = torch.Generator().manual_seed(B)
            prompts = torch.randint(0, spec["vocab"], (B, args.prompt_len), generator=g)
            out: dict = {}
            run_lp, run_hf = contenders(lp, hf, prompts, new, out)
            times = C.interleaved({"learnpos": run_lp, "hf": run_hf}, args.repeats, 1)
            key = f"{name}/b{B}"
            ratio = C.median_ratio(times["hf"], times["learnpos"])
            match = out["learnpos"] == out["hf"]
            result["ratio_vs_hf"][key] = round(ratio, 3)
            result["tokens_match"][key] = match
            for side in ("learnpos", "hf"):
                result["tokens_per_s"][side][key] = round(B * new / statistics.median(times[side]) * 1e3, 1)
            print(f"generate {key:9s} prompt {args.prompt_len} + {new} new: learnpos "
                  f"{result['tokens_per_s']['learnpos'][key]:8.0f} tok/s  HF {result['tokens_per_s']['hf'][key]:8.0f} "
                  f"tok/s  ratio {ratio:.3f}x  (same tokens: {match}; logits diff {diff:.1e})", flush=True)
    result["min_ratio_vs_hf"] = min(result["ratio_vs_hf"].values())
    print(f"generate_throughput: ratio vs HF {result['ratio_vs_hf']} (min {result['min_ratio_vs_hf']:.3f}); "
          f"{C.thread_note()}")
    C.emit(args.json, result)


if __name__ == "__main__":
    main()
