"""Parameter groups (with an explicit decay policy per learned table), the optimizers
(`train.optimizer`: adamw, sgd, muon) and the LR schedule."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn

from learnpos.config import TrainConfig
from learnpos.hardware import resolve_dtype


def param_groups(model: nn.Module, weight_decay: float, leave_out: frozenset[int] = frozenset()) -> list[dict]:
    """Groups named so the policy is visible in checkpoints and logs:

    decay        matrices of Linear layers and the token embedding (weight decay applies)
    no_decay     biases and LayerNorm gains (1-D tensors: decaying them only hurts)
    table <name> each learned table (`pos` for positions, then `model.tables`), decayed only
                 if its own config entry says so (`model.positional.weight_decay`,
                 `model.tables[i].weight_decay`). AdamW's decoupled decay multiplies every
                 row by (1 - lr*wd) each step, including rows no sequence ever reaches
                 (they get zero gradient), so by default no table is decayed. (With SGD the
                 same setting is coupled L2: wd*W is added to the gradient.)

    leave_out: ids of parameters another optimizer updates (Muon's matrices); groups left empty go.
    """
    tables = model.learned_tables() if hasattr(model, "learned_tables") else {}
    table_params = {id(t.weight): name for name, t in tables.items()}
    decay, no_decay = [], []
    for p in model.parameters():  # each shared parameter once (a tied head is tok_emb.weight)
        if not p.requires_grad or id(p) in table_params or id(p) in leave_out:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    for name, table in tables.items():
        groups.append({"name": f"table {name}", "params": [table.weight], "lr_ratio": table.lr_scale,
                       "weight_decay": weight_decay if table.weight_decay else 0.0})
    return [g for g in groups if g["params"] or not leave_out]


def muon_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The matrices Muon updates: every 2-D weight inside the blocks (attention qkv and proj, the
    MLP's fc, gate and proj). The token embedding, every learned table, the heads, norms and
    biases are not hidden-layer matrices and stay with AdamW, as Muon's authors prescribe."""
    return [p for p in model.blocks.parameters() if p.dim() == 2 and p.requires_grad]


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """PyTorch Muon's quintic Newton-Schulz iteration in g's own precision (PyTorch's casts to
    bfloat16 first): X = g / ||g||_F in its wide orientation, then X <- a X + (b A + c A^2) X with
    A = X X^T, `steps` times (learnpos.reference.optim.newton_schulz states it in NumPy)."""
    a, b, c = coefficients
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        A = x @ x.T
        x = torch.addmm(x, torch.addmm(A, A, A, beta=b, alpha=c), x, beta=a)
    return x.T if g.shape[0] > g.shape[1] else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon with the precision of its Newton-Schulz iteration as a setting. "bfloat16"
    is PyTorch's Muon unchanged; "float32" runs the same update (momentum, Nesterov, the iteration,
    decoupled decay, the shape scale sqrt(max(1, A/B))) with the iteration in the parameters'
    precision, at least float32: on a CPU without fast bf16 matmuls that is 1.5-2x faster. The
    state (`momentum_buffer`) is PyTorch's, so either precision resumes the other's checkpoint."""

    def __init__(self, params, precision: str = "bfloat16", **kw):
        super().__init__(params, **kw)
        self.precision = precision

    @torch.no_grad()
    def step(self, closure=None):
        if self.precision == "bfloat16":
            return super().step(closure)
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                update = newton_schulz(update.to(torch.promote_types(p.dtype, torch.float32)),
                                       group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * math.sqrt(max(1.0, p.shape[0] / p.shape[1])))
        return None


def muon_precision(t: TrainConfig, device_type: str) -> str:
    """train.muon_precision with auto resolved as `train.dtype=auto` is: bfloat16 where bf16 matmuls
    are fast (CUDA with bf16, CPUs with AMX), float32 elsewhere."""
    return resolve_dtype(torch.device(device_type), t.muon_precision)


class MuonWithAdamW:
    """`Muon` for `muon_matrices`, torch.optim.AdamW for every other parameter, as one
    optimizer to the trainer: `param_groups` lists Muon's group (named "muon") then AdamW's; the
    trainer's learning rate reaches Muon's group times its `lr_ratio` (train.muon_lr / train.lr),
    so both follow one schedule; `state_dict` holds both."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"muon", "adamw"}:
            raise ValueError("the optimizer state is not a Muon + AdamW state")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])



def build_optimizer(model: nn.Module, t: TrainConfig, device_type: str = "cpu") -> torch.optim.Optimizer:
    if t.optimizer == "muon":
        matrices = muon_matrices(model)
        muon = Muon([{"name": "muon", "params": matrices, "lr_ratio": t.muon_lr / t.lr}],
                    precision=muon_precision(t, device_type), lr=t.muon_lr, weight_decay=t.muon_weight_decay,
                    momentum=t.muon_momentum, nesterov=t.muon_nesterov, ns_steps=t.muon_ns_steps)
        groups = param_groups(model, t.weight_decay, leave_out=frozenset(map(id, matrices)))
        adamw = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=device_type in ("cpu", "cuda"))
        return MuonWithAdamW(muon, adamw)
    groups = param_groups(model, t.weight_decay)
    if t.optimizer == "sgd":
        # Plain SGD with momentum 0 is exactly P <- P - lr * dL/dP (weight decay here is
        # coupled L2: g + wd * P, as torch.optim.SGD defines it).
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    # The fused kernel exists on CPU and CUDA and is deterministic: resume stays bit-exact
    # (tests/test_train.py); benchmarks/train_throughput.py measures the step with it.
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=device_type in ("cpu", "cuda"))


def lr_at(step: int, t: TrainConfig) -> float:
    """Linear warmup from 0 over `warmup_iters`, then (cosine) cosine from `lr` to `min_lr` at
    `max_iters`, or (wsd) `lr` held until the last `decay_frac` of `max_iters`, then linear to `min_lr`."""
    if step < t.warmup_iters:
        return t.lr * (step + 1) / t.warmup_iters
    if step >= t.max_iters:
        return t.min_lr
    if t.schedule == "wsd":
        decay_start = max(t.warmup_iters, t.max_iters - round(t.decay_frac * t.max_iters))
        if step < decay_start:
            return t.lr
        return t.lr + (step - decay_start) / max(1, t.max_iters - decay_start) * (t.min_lr - t.lr)
    progress = (step - t.warmup_iters) / max(1, t.max_iters - t.warmup_iters)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


class WeightAverage:
    """An exponential moving average of the model's parameters (Polyak averaging), updated
    after every optimizer step: avg <- d avg + (1 - d) w with d = min(decay, (1 + n) / (10 + n))
    at update n (0-based), so the first steps are not dominated by the random init. It covers
    about the last 1 / (1 - decay) steps. `applied()` puts it into the model (for evaluation,
    the best weights and the saved model) and the trained weights back afterwards."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [name for name, _ in model.named_parameters()]  # each shared parameter once
        self.params = [p for _, p in model.named_parameters()]
        self.live = [p.detach() for p in self.params]  # views made once: the update runs every step
        self.average = [p.clone() for p in self.live]
        self.trained: dict[str, torch.Tensor] | None = None  # the trained weights while applied

    @torch.no_grad()
    def update(self, n: int) -> None:
        d = min(self.decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(self.average, self.live, 1.0 - d)

    @contextmanager
    def applied(self):
        """The average in the model's parameters for the block; `trained` holds the trained
        weights meanwhile (a checkpoint saves them for resume)."""
        with torch.no_grad():
            self.trained = {name: p.detach().clone() for name, p in zip(self.names, self.params, strict=True)}
            torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, list(self.trained.values()))
            self.trained = None

    @torch.no_grad()
    def resume(self, trained: dict[str, torch.Tensor] | None) -> None:
        """The model holds a checkpoint's model.safetensors: that is the average; the trained
        weights saved beside it go into the model (a checkpoint saved without an average has
        none: the average then starts from its weights)."""
        self.average = [p.detach().clone() for p in self.params]
        if trained is not None:
            load_trained(self.names, self.params, trained)

    @torch.no_grad()
    def apply_for_good(self) -> None:
        """The average into the model, for the end of training."""
        torch._foreach_copy_(self.params, self.average)


@torch.no_grad()
def load_trained(names: list[str], params: list[torch.Tensor], trained: dict[str, torch.Tensor]) -> None:
    missing = [n for n in names if n not in trained]
    if missing:
        raise ValueError(f"the saved trained weights lack {missing[0]}")
    for name, p in zip(names, params, strict=True):
        p.copy_(trained[name])
