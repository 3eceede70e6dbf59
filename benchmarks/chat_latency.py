"""How long `learnpos chat` takes to answer: a trained dialogue run replays a fixed script of
user turns through `ChatSession` (the code behind `learnpos chat`, streaming included) and the
seconds from the user's line to the end of the reply are timed per turn.

    python benchmarks/chat_latency.py --run DIR [--json] [--turns 12] [--max-new-tokens 48]

The script's conversation grows turn by turn, so later replies read longer histories (and,
once it no longer fits, the newest turns that fit the block). The issue's target: within 1 s
per turn on CPU. Prints the median and the slowest turn and the number of reply tokens.
"""

from __future__ import annotations

import argparse
import io
import statistics

import _common as C
import torch

from learnpos.chat import ChatSession
from learnpos.load import load_run

LINES = ["Hi, how are you today?", "What do you do for a living?", "That sounds interesting. Do you like it?",
         "Where would you like to go on holiday?", "How much does a ticket cost?", "Can I pay by credit card?",
         "What time does the train leave?", "Thank you very much for your help.", "Do you want to have dinner "
         "with me tonight?", "I am sorry, I am late.", "What is the weather like tomorrow?", "Goodbye, see you."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a dialogue run directory")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--turns", type=int, default=len(LINES))
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    print(f"# {C.cpu_info()}; torch {torch.__version__}; {C.thread_note()}; run {args.run}", flush=True)
    model, cfg, task = load_run(args.run)
    session = ChatSession(model, task, max_new_tokens=args.max_new_tokens, out=io.StringIO(),
                          generator=torch.Generator().manual_seed(0))
    session.reply("Hello.")  # warm-up: first-call allocations are not what a user waits for turn after turn
    session.handle("/reset")
    times, tokens = [], []
    for k in range(args.turns):
        line = LINES[k % len(LINES)]
        session.write(f"{session.user_name}> {line}")  # the transcript shows both sides
        reply = session.reply(line)
        times.append(session.last_reply_s)
        tokens.append(len(task.encode([reply])[0]) if reply else 0)
    print(session.out.getvalue())
    med, worst = statistics.median(times), max(times)
    print(f"{args.turns} turns: median {med * 1000:.0f} ms, slowest {worst * 1000:.0f} ms per reply; "
          f"median {statistics.median(tokens):.0f} reply tokens (max {args.max_new_tokens}); "
          f"model {cfg.model.n_layer}x{cfg.model.n_embd}, dialogue.positions={cfg.dialogue.positions}")
    C.emit(args.json, {"run": args.run, "turns": args.turns, "median_reply_s": med, "max_reply_s": worst,
                       "median_reply_tokens": statistics.median(tokens), "max_new_tokens": args.max_new_tokens,
                       "reply_s": times, "model": f"{cfg.model.n_layer}x{cfg.model.n_embd}",
                       "positions": cfg.dialogue.positions})


if __name__ == "__main__":
    main()
