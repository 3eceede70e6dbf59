"""The derivation as code: the whole model, its backward and its optimizers in NumPy float64.

Nothing in this package imports the deep-learning framework: every gradient here is
written out by hand, so `learnpos.verify` can hold PyTorch autograd and this reference
against each other (and the reference against finite differences).

    layers.py   one forward/backward pair per layer, and `table_gradient`, the closed form
                dL/dP[k] = sum over (b,t) with pos[b,t] = k of dL/dh[b,t]
    model.py    `forward(params, idx, targets, cfg, ...)` and `backward(cache)` of the model
    optim.py    `sgd_step` and `adamw_step`, operation for operation as PyTorch's optimizers

Shape letters: B batch, T sequence length, C = n_embd, nh heads, hs = C // nh, L table
rows, V vocab.
"""

from learnpos.reference.layers import table_gradient
from learnpos.reference.model import backward, forward, parameter_shapes, trainable_names
from learnpos.reference.optim import adamw_step, sgd_step, weight_decay_policy

__all__ = ["forward", "backward", "table_gradient", "parameter_shapes", "trainable_names",
           "sgd_step", "adamw_step", "weight_decay_policy"]
