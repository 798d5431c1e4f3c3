"""The strategy registry: each strategy's recipe (conf/strategy/<name>.yaml), its keys checked, looked up by name.

What trains, at which learning rate, in which epoch is decided by these keys; `strategies.Plan` applies a
recipe to a model. A strategy is data over a few shared mechanisms, never its own code path:

- What can train: the `unfreeze` stages (`all`, a list, `[]`, or null = the model's last stage),
  narrowed by the `params` filter (`all`, `bias`, `norm`, `no_batchnorm`). The fresh head always trains.
- Per-stage learning rates: stage k from the top (k = 1 is the model's last stage) trains at
  `optim.lr * backbone_lr_scale * layer_decay**(k-1)`, the head at `optim.lr`. With `layer_decay: 1`
  every pretrained stage shares `backbone_lr_scale` (ULMFiT's discriminative LRs in their simplest
  form). Nothing in a `pretrained: false` network is pretrained, so there all scales are 1.
- A schedule of phases: the head alone for `probe_epochs`, then the stages, all at once
  (`unfreeze_every: null`) or one more from the top every `unfreeze_every` epochs.
- A regularizer added to the loss: `l2sp_alpha`, `l2sp_beta` (L2-SP).
- A per-epoch LR reweighting: `reweight: rgn` (auto-RGN).
- `freeze_bn`: BatchNorm layers whose parameters are all frozen stay in eval mode (`frozen`), none do
  (`none`), or every BatchNorm does (`all`, LP-FT's `use_net_val_mode`).

One rung trains nothing: `score` runs probe's frozen pass and scores its features (`Recipe.trains`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Callable

from torch import nn

from ..config.errors import ConfigError
from ..config.keys import SCORE_STRATEGY, STRATEGIES
from ..models import ModelSpec
from ..config.rules import rule_of
from ..config.schema import PARAMS, AnyStrategy, FreezeBN, strategy_keys

# The ladder's four rungs, then the strategies beyond it (conf/strategy/<name>.yaml each).
NAMES = STRATEGIES
# The rung that trains nothing: the frozen features' transferability scores only (tlsweep.features.scores)
SCORE = SCORE_STRATEGY

# timm's and torchvision's LayerNorm2d subclass nn.LayerNorm
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

# Which parameters of an unfrozen stage train: (parameter's own name, the module holding it) -> bool.
FILTERS: dict[str, Callable[[str, nn.Module], bool]] = {
    "all": lambda leaf, module: True,
    # BitFit (Ben Zaken et al. 2022) / TinyTL-B: every tensor named `bias`, normalization layers' too
    "bias": lambda leaf, module: leaf == "bias",
    # TinyTL "FT-Norm+Last": the affine parameters of normalization layers
    "norm": lambda leaf, module: isinstance(module, _NORM_TYPES),
    # auto-RGN: Lee et al.'s get_lr_weights leaves out parameters named "bn" (their ResNets' BatchNorms)
    "no_batchnorm": lambda leaf, module: not isinstance(module, nn.modules.batchnorm._BatchNorm),
}
assert tuple(FILTERS) == PARAMS  # the schema's rule for strategy.params names them


@dataclass
class Recipe(AnyStrategy):
    """A strategy config, checked. Its keys, types and defaults are the schema's (tlsweep/config/schema.py): a
    key a yaml leaves out takes the default there."""

    name: str | None = None  # None: a recipe built in code, unnamed

    @classmethod
    def of(cls, strategy) -> "Recipe":
        """From the `strategy` config (a DictConfig, a dict, or any object with these attributes)."""
        if isinstance(strategy, Recipe):
            return strategy
        get = strategy.get if hasattr(strategy, "get") else lambda k, d: getattr(strategy, k, d)
        name = get("name", None)
        known = set(strategy_keys(name))  # the strategy's own schema: finetune has no probe_epochs
        keys = set(strategy.keys()) if hasattr(strategy, "keys") else known
        unknown = sorted(keys - known)
        if unknown:
            owners = sorted({n for n in STRATEGIES for k in unknown if k in strategy_keys(n)})
            near = sorted({m for k in unknown for m in difflib.get_close_matches(k, sorted(known), cutoff=0.75)})
            raise ConfigError(f"strategy {name} has no key {', '.join(unknown)}"
                              + (f"; did you mean {', '.join(near)}?" if near else "")
                              + (f" ({', '.join(owners)} {'has' if len(owners) == 1 else 'have'} it: sweep "
                                 "such a key in its own sweep)" if owners else "")
                              + f"; its keys: {', '.join(sorted(known))}")
        values = {f.name: get(f.name, f.default) for f in fields(cls) if f.name != "name"}
        values["freeze_bn"] = FreezeBN.of(values["freeze_bn"])
        for key in ("unfreeze", "target_modules"):
            if hasattr(values[key], "__iter__") and not isinstance(values[key], str):
                values[key] = list(values[key])  # a ListConfig, as a plain list
        recipe = cls(name=name, **values)
        recipe._check()
        return recipe

    def _check(self) -> None:
        def bad(key, value, valid):
            raise ConfigError(f"strategy.{key}={value!r} (strategy {self.name}); valid: {valid}")

        if self.name is not None and self.name not in NAMES:  # None: a recipe built in code, unnamed
            bad("name", self.name, ", ".join(NAMES))
        for f in fields(AnyStrategy):  # each key's range, as the schema declares it (tlsweep/config/rules.py)
            rule = rule_of(f)
            if rule is not None and not rule.ok(getattr(self, f.name)):  # a 0 where null means "unset" too
                bad(f.name, getattr(self, f.name), rule.text)
        if self.l2sp_alpha and not self.pretrained:
            bad("l2sp_alpha", self.l2sp_alpha, "0 when pretrained=false: there is no start point to pull toward")
        if not self.trains and not self.cache_features:
            bad("cache_features", self.cache_features, "true: the score rung scores the feature cache's features")

    @property
    def trains(self) -> bool:
        """Whether a run of this recipe trains at all: every rung but `score`, which stops after the frozen
        pass and its scores (tlsweep.features.scores), with no head, no optimizer step and no accuracy."""
        return self.name != SCORE

    @property
    def phased(self) -> bool:
        return self.probe_epochs > 0 or self.unfreeze_every is not None

    def lr_scale(self, k: int) -> float:
        """The LR multiplier of stage k from the top (k = 1: the last stage)."""
        if not self.pretrained:  # scratch: nothing is pretrained, so nothing earns a smaller LR
            return 1.0
        return self.backbone_lr_scale * self.layer_decay ** (k - 1)


def resolve_unfreeze(spec: ModelSpec, unfreeze) -> list[str]:
    """The stage names that train, checked against the model's stages.

    Stages go by name or by index into the model's stages, input to output (0 = the stem,
    -1 = the last stage), as `python -m tlsweep` prints them when one is unknown.
    """
    names = list(spec.stages)
    if unfreeze is None:
        return [spec.last_stage]
    if isinstance(unfreeze, (str, int)):
        if unfreeze == "all":
            return names
        unfreeze = [unfreeze]
    chosen, unknown = set(), []
    for s in unfreeze:
        if isinstance(s, int) and not isinstance(s, bool) and -len(names) <= s < len(names):
            chosen.add(names[s])
        elif isinstance(s, str) and s in spec.stages:
            chosen.add(s)
        else:
            unknown.append(s)
    if unknown:
        raise ConfigError(
            f"strategy.unfreeze names unknown stage(s) {unknown} for model {spec.name}; valid stages "
            f"(input to output, or their indices 0..{len(names) - 1}, -1 = the last): {names}"
        )
    return [s for s in names if s in chosen]  # input to output, whatever order the list had


def check(spec: ModelSpec, strategy, epochs: int | None = None) -> Recipe:
    """The checked recipe; fails on a bad key, value or stage name before any work is done."""
    recipe = Recipe.of(strategy)
    resolve_unfreeze(spec, recipe.unfreeze)
    if epochs is not None and recipe.probe_epochs and epochs <= recipe.probe_epochs:
        raise ConfigError(f"strategy {recipe.name}: epochs={epochs} leaves no epoch after "
                          f"strategy.probe_epochs={recipe.probe_epochs}; raise epochs or lower probe_epochs")
    return recipe
