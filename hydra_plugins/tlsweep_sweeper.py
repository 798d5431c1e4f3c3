"""tlsweep's sweeper: Hydra's basic sweeper, composing each job's config once instead of twice.

Before it launches a batch, Hydra's BasicSweeper composes every job's config to catch a bad override early
(`validate_batch_is_legal`); then the launcher composes each one again to run it, so a sweep paid tlsweep's
composition twice per job, seconds of a ladder's fixed cost (docs/speed.md, "Fixed cost"). Here the launcher gets
the config the check composed (the check gets a copy, much cheaper than a composition), so the
early check stays and the second composition goes. Any other caller, and a launcher's remote side (submitit
pickles the launcher into every job), composes as before.

Hydra instantiates sweepers only from the `hydra_plugins` package, hence this module's place;
conf/hydra/sweeper/tlsweep.yaml selects it.
"""
from __future__ import annotations

import copy

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext


class ComposeOnce:
    """A config loader that hands the next caller asking for the same sweep config the one it composed last."""

    def __init__(self, loader):
        self.loader = loader
        self.made: dict = {}

    def load_sweep_config(self, master_config, sweep_overrides):
        key = (id(master_config), tuple(sweep_overrides))
        made = self.made.pop(key, None)
        if made is not None:  # the launcher, after the check: takes the one the check composed
            return made
        made = self.made[key] = self.loader.load_sweep_config(master_config, sweep_overrides)
        return copy.deepcopy(made)  # the check's copy: whatever it does to it, the launcher's stays as composed

    def __getattr__(self, name):  # everything else is the real loader's
        if name.startswith("__") or name in ("loader", "made"):
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __getstate__(self):  # a pickled launcher (submitit) carries the loader, not the configs kept here
        return {"loader": self.loader, "made": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)


class TlsweepSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function, config) -> None:
        once = HydraContext(config_loader=ComposeOnce(hydra_context.config_loader), callbacks=hydra_context.callbacks)
        super().setup(hydra_context=once, task_function=task_function, config=config)
