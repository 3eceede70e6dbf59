"""Search spaces for `learnpos tune`, declared as data beside each task's derivation
(`SPACE` in learnpos.derive.kg, .lm, .dialogue). No Optuna here: `learnpos.tune` turns a
`Param` into a suggestion."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    """One searched key. kind: "float" (low..high, log-uniform if `log`), "int" (low..high),
    "choice" (one of `choices`), or "scale" (the base config's value times one of `choices`,
    for step counts that depend on the data). stage 1: the training settings, searched from the
    first trial; stage 2: the model's shape and the recipe, searched only in the later part of
    the budget (`learnpos.tune.FIRST_STAGE`): a trial of a wider or deeper model costs several
    of the base's, and its step count was not fitted to it."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()
    stage: int = 1

    def __post_init__(self):
        if self.kind not in ("float", "int", "choice", "scale"):
            raise ValueError(f"{self.key}: kind '{self.kind}' is not float, int, choice or scale")
        if self.kind in ("choice", "scale") and not self.choices:
            raise ValueError(f"{self.key}: a {self.kind} parameter needs choices")
        if self.stage not in (1, 2):
            raise ValueError(f"{self.key}: stage {self.stage} is not 1 or 2")
        if self.kind in ("float", "int") and not self.low <= self.high:
            raise ValueError(f"{self.key}: low {self.low} > high {self.high}")


# The optimizer and the small-GPT recipe switches (benchmarks/time_to_quality.py measures each
# alone): every task's space offers them; the base config's own values are a choice too.
RECIPE = (
    Param("train.optimizer", "choice", choices=("adamw", "muon"), stage=2),
    Param("train.muon_lr", "float", 5e-3, 0.08, log=True, stage=2),
    Param("model.qk_norm", "choice", choices=(False, True), stage=2),
    Param("model.zero_init_proj", "choice", choices=(False, True), stage=2),
    Param("train.schedule", "choice", choices=("cosine", "wsd"), stage=2),
    Param("train.ema", "choice", choices=(0.0, 0.99, 0.999), stage=2),
)
# tasks scored by the vocabulary head
LOGITS = (Param("model.logit_softcap", "choice", choices=(0.0, 15.0, 30.0), stage=2),)

