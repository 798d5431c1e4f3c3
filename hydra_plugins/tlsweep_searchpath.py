"""Puts the user's preset folder (tlsweep/config/searchpath.py decides which) before tlsweep's own configs.

Hydra calls every SearchPathPlugin for every app in the environment: this one acts only where the primary config
folder is tlsweep's. Hydra's `--config-dir` still goes first: it is prepended after the plugins run.
"""
from __future__ import annotations

import sys

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class TlsweepPresets(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from tlsweep.config import searchpath

        if not any(searchpath.is_package_conf(e.path) for e in search_path.get_path()):
            return  # another Hydra app
        folder = searchpath.user_searched()
        if folder is None:
            return
        refused = searchpath.clash(folder)
        if refused:
            print(refused, file=sys.stderr)
            raise SystemExit(2)  # before any composition: a bad input, like a config Hydra could not compose
        search_path.prepend(provider=searchpath.PROVIDER, path=f"file://{folder}")
