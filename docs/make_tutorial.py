# ruff: noqa: E501  (long lines are the notebook's prose and formulas)
"""Writes docs/tutorial.ipynb (English) and docs/tutorial.zh.ipynb (中文) from one list of
cells: the code cells are the same objects in both, so the two notebooks stay in step by
construction (tests/test_tutorial.py executes the English one and compares the code).

    python docs/make_tutorial.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

# (English markdown, Chinese markdown) or a code string
CELLS: list = [
    ("# The gradient of a learned position table, computed two ways\n\n"
     "A learned positional encoding is a trainable table `P` with one row per position. The model's input is\n\n"
     "$$h_{b,t} = E[x_{b,t}] + P[\\mathrm{pos}_{b,t}]$$\n\n"
     "and training moves the table by $P[k] \\leftarrow P[k] - \\mathrm{lr}\\,\\partial L/\\partial P[k]$. "
     "This notebook builds a tiny model, computes $\\partial L/\\partial P$ by hand with NumPy (the chain rule "
     "through every layer, learnpos's float64 reference) and with PyTorch's autograd, checks that they agree, "
     "takes one SGD step by hand and with `torch.optim.SGD`, and finally trains a small model while watching "
     "its table learn. Every claim is an `assert`: running the notebook checks it.",
     "# 可学习位置表的梯度：两种算法\n\n"
     "可学习的位置编码就是一张可训练的表 `P`，每个位置一行。模型的输入是\n\n"
     "$$h_{b,t} = E[x_{b,t}] + P[\\mathrm{pos}_{b,t}]$$\n\n"
     "训练按 $P[k] \\leftarrow P[k] - \\mathrm{lr}\\,\\partial L/\\partial P[k]$ 更新这张表。本笔记本构建一个很小的模型，"
     "用 NumPy 手工（沿每一层的链式法则，即 learnpos 的 float64 参考实现）和用 PyTorch 自动求导各算一遍 "
     "$\\partial L/\\partial P$，验证两者一致；再手工和用 `torch.optim.SGD` 各做一步 SGD；最后训练一个小模型，"
     "观察位置表如何学习。每个结论都是一个 `assert`：运行笔记本就是在检查它。"),
    "import numpy as np\n"
    "import torch\n"
    "import torch.nn.functional as F\n\n"
    "from learnpos import GPT, ModelConfig, PositionalConfig\n"
    "from learnpos.reference import model as reference\n\n"
    "torch.manual_seed(0)\n"
    "V, T, L = 11, 6, 8  # vocabulary, sequence length, rows of the position table (rows 6 and 7 stay unused)\n"
    "cfg = ModelConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=16, dropout=0.0,\n"
    "                  positional=PositionalConfig(kind=\"learned\", max_len=L))\n"
    "model = GPT(cfg).double()  # float64, so the two ways agree to ~1e-15\n"
    "x = torch.randint(0, V, (3, T))  # 3 sequences of 6 tokens\n"
    "y = torch.randint(0, V, (3, T))  # their targets\n"
    "print(model.pos.weight.shape)",
    ("## 1. The forward pass and the loss\n\n"
     "The loss is the mean cross-entropy over the $B \\cdot T$ predictions. The NumPy reference runs the same "
     "forward pass from the model's weights; `h` is the embedding sum.",
     "## 1. 前向计算与损失\n\n"
     "损失是 $B \\cdot T$ 个预测的平均交叉熵。NumPy 参考实现用同一组权重做同样的前向计算；`h` 是嵌入之和。"),
    "params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}\n"
    "loss_np, logits_np, cache = reference.forward(params, x.numpy(), y.numpy(), cfg)\n\n"
    "E, P = params[\"tok_emb.weight\"], params[\"pos.weight\"]\n"
    "h = E[x.numpy()] + P[np.arange(T)]  # h = E[x] + P[pos], positions 0..T-1 in every row\n\n"
    "logits = model(x).logits\n"
    "loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())\n"
    "print(f\"loss: NumPy {loss_np:.12f}, PyTorch {loss.item():.12f}\")\n"
    "assert abs(loss_np - loss.item()) < 1e-12",
    ("## 2. $\\partial L/\\partial P$ by the chain rule\n\n"
     "Position $k$'s row enters the loss only through the $h_{b,t}$ with $\\mathrm{pos}_{b,t}=k$, each with "
     "coefficient 1, so\n\n"
     "$$\\frac{\\partial L}{\\partial P[k]} = \\sum_{b,t:\\ \\mathrm{pos}_{b,t}=k} \\frac{\\partial L}{\\partial h_{b,t}}.$$\n\n"
     "The reference's backward pass gives $\\partial L/\\partial h$ by hand (through the head, the final "
     "LayerNorm, the MLP, attention, every residual); summing it by position is one `np.add.at`.",
     "## 2. 用链式法则求 $\\partial L/\\partial P$\n\n"
     "第 $k$ 行只通过 $\\mathrm{pos}_{b,t}=k$ 的那些 $h_{b,t}$ 进入损失，系数都是 1，所以\n\n"
     "$$\\frac{\\partial L}{\\partial P[k]} = \\sum_{b,t:\\ \\mathrm{pos}_{b,t}=k} \\frac{\\partial L}{\\partial h_{b,t}}.$$\n\n"
     "参考实现的反向传播手工给出 $\\partial L/\\partial h$（经过输出层、最后的 LayerNorm、MLP、注意力和每条残差）；"
     "按位置求和只需一次 `np.add.at`。"),
    "grads_np, dh = reference.backward(cache, return_dh=True)  # dL/dh, (B, T, C), by hand\n"
    "dP_hand = np.zeros_like(P)\n"
    "positions = np.broadcast_to(np.arange(T), x.shape)\n"
    "np.add.at(dP_hand, positions, dh)  # dL/dP[k] = sum of dL/dh over every token at position k\n\n"
    "loss.backward()\n"
    "dP_autograd = model.pos.weight.grad.numpy()\n"
    "print(\"max |by hand - autograd|:\", np.abs(dP_hand - dP_autograd).max())\n"
    "print(\"rows no token uses:\", dP_autograd[T:].tolist()[0][:4], \"...\")\n"
    "assert np.abs(dP_hand - dP_autograd).max() < 1e-12\n"
    "assert (dP_autograd[T:] == 0).all() and (dP_hand[T:] == 0).all()  # exactly zero, not small\n"
    "assert np.abs(grads_np[\"pos.weight\"] - dP_hand).max() < 1e-15  # the reference's own table gradient",
    ("## 3. One SGD step by hand and by `torch.optim.SGD`\n\n"
     "$P \\leftarrow P - \\mathrm{lr}\\cdot\\partial L/\\partial P$: the rows no token used do not move.",
     "## 3. 手工一步 SGD 与 `torch.optim.SGD`\n\n"
     "$P \\leftarrow P - \\mathrm{lr}\\cdot\\partial L/\\partial P$：没有被任何 token 用到的行保持不动。"),
    "lr = 0.1\n"
    "P_by_hand = P - lr * dP_hand\n"
    "torch.optim.SGD([model.pos.weight], lr=lr).step()\n"
    "P_torch = model.pos.weight.detach().numpy()\n"
    "print(\"max |by hand - torch|:\", np.abs(P_by_hand - P_torch).max())\n"
    "assert np.abs(P_by_hand - P_torch).max() < 1e-15\n"
    "assert np.array_equal(P_torch[T:], P[T:])  # unused rows unchanged",
    ("## 4. Watching a table learn\n\n"
     "A 2-layer model learns to reverse 8 symbols (learnpos's `reverse` task) with a learned table. Every "
     "100 steps we keep the cosine similarity of every pair of rows and how far each row has moved from its "
     "initial value. At initialisation the rows are random vectors; the task then shapes them into a code "
     "the attention layers read (for reversing, positions $t$ and $2n-t$ must find each other). Without the "
     "table the model cannot tell the order of its input at all: zeroing the table after training should "
     "drop the exact-match accuracy from about 1 to about 0.",
     "## 4. 观察位置表的学习\n\n"
     "一个 2 层模型用可学习的位置表学习把 8 个符号倒序（learnpos 的 `reverse` 任务）。每 100 步记录各行两两之间的"
     "余弦相似度，以及每行离初始值移动了多远。初始化时各行是随机向量；训练把它们塑造成注意力层能读懂的编码"
     "（倒序时位置 $t$ 与 $2n-t$ 必须互相找到）。没有这张表，模型完全无法知道输入的顺序：训练后把表清零，"
     "完全匹配的准确率应当从约 1 降到约 0。"),
    "import tempfile\n\n"
    "import matplotlib.pyplot as plt\n\n"
    "import learnpos.tasks  # registers the tasks\n"
    "from learnpos.config import load_config\n"
    "from learnpos.load import build_model\n"
    "from learnpos.optim import build_optimizer, lr_at\n"
    "from learnpos.tasks import build_task\n\n"
    "run = tempfile.mkdtemp()\n"
    "cfg = load_config(\"demo\", {\"synthetic.length\": \"8\", \"model.positional.max_len\": \"17\",\n"
    "                             \"train.max_iters\": \"400\", \"train.warmup_iters\": \"20\", \"train.out_dir\": run})\n"
    "task = build_task(cfg, run)\n"
    "cfg.model.vocab_size = task.vocab_size\n"
    "torch.manual_seed(0)\n"
    "model = build_model(cfg, task)\n"
    "opt = build_optimizer(model, cfg.train, \"cpu\")\n\n"
    "def similarity(table):\n"
    "    w = F.normalize(table.detach().float(), dim=1)\n"
    "    return (w @ w.T).numpy()\n\n"
    "initial = model.pos.weight.detach().clone()\n"
    "snapshots = {0: similarity(model.pos.weight)}\n"
    "for step in range(cfg.train.max_iters):\n"
    "    for group in opt.param_groups:\n"
    "        group[\"lr\"] = lr_at(step, cfg.train)\n"
    "    loss = task.loss(model, task.train_batch(step, cfg.train.batch_size))\n"
    "    loss.backward()\n"
    "    opt.step()\n"
    "    opt.zero_grad(set_to_none=True)\n"
    "    if (step + 1) % 100 == 0:\n"
    "        snapshots[step + 1] = similarity(model.pos.weight)\n"
    "metrics = task.evaluate(model, \"cpu\")\n"
    "print(f\"final loss {loss.item():.3f}, held-out exact match {metrics['exact_match']:.3f}\")\n\n"
    "fig, axes = plt.subplots(1, len(snapshots), figsize=(3 * len(snapshots), 3))\n"
    "for ax, (step, sim) in zip(axes, snapshots.items()):\n"
    "    ax.imshow(sim, vmin=-1, vmax=1, cmap=\"RdBu_r\")\n"
    "    ax.set_title(f\"step {step}\")\n"
    "    ax.set_xlabel(\"position\")\n"
    "axes[0].set_ylabel(\"position\")\n"
    "plt.tight_layout()\n"
    "plt.show()\n\n"
    "moved = (model.pos.weight.detach() - initial).norm(dim=1)\n"
    "print(\"how far each row moved:\", [round(v, 2) for v in moved.tolist()])\n"
    "with torch.no_grad():\n"
    "    model.pos.weight.zero_()  # the same model, no positions\n"
    "blind = task.evaluate(model, \"cpu\")\n"
    "print(f\"exact match with the table {metrics['exact_match']:.3f}, with it zeroed {blind['exact_match']:.3f}\")\n"
    "assert metrics[\"exact_match\"] > 0.95 and blind[\"exact_match\"] < 0.2\n"
    "assert (moved > 0.1).all()  # every row the task uses was trained",
    ("The derivation in full, with every formula linked to the code and the `learnpos verify` row that "
     "checks it: [derivation.md](derivation.md).",
     "完整的推导，每个公式都链接到对应的代码和检查它的 `learnpos verify` 行：[derivation.zh.md](derivation.zh.md)。"),
]


def notebook(lang: int) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) if isinstance(c, str) else nbformat.v4.new_markdown_cell(c[lang])
                for c in CELLS]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # stable ids: regenerating gives the same files
    return nb


def main() -> None:
    for lang, name in ((0, "tutorial.ipynb"), (1, "tutorial.zh.ipynb")):
        nbformat.write(notebook(lang), HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
