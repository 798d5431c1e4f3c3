"""Where tlsweep finds its config groups: the user's presets first, then the package's own.

The user's folder is `./conf` of the directory tlsweep runs from, or `$TLSWEEP_CONFIG_DIR`. Its group folders
(`data/xray.yaml`, `model/...`, `strategy/...`, `experiment/...`) are searched before the package's, so a preset there
adds an option, or replaces the package's option of the same name. A fixed folder, rather than Hydra's `--config-dir`
on every command, because the presets belong to the project they sit in, as that project's data does; a
`hydra.searchpath` entry would not do, since Hydra searches those after the package's own configs. The Hydra plugin
`hydra_plugins/tlsweep_searchpath.py` puts the folder on the search path; this module decides which folder it is.

Torch-free and quick to import: Hydra imports the plugin for every Hydra app in the environment.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "TLSWEEP_CONFIG_DIR"
PRIMARY = ("config.yaml", "report.yaml")  # tlsweep's primary configs: a user's folder must not replace them
PROVIDER = "tlsweep (your presets)"


def _package_conf() -> Path:
    """tlsweep/conf in an installed wheel, the clone's top-level conf/ in an editable install."""
    here = Path(__file__).resolve().parents[1]  # the tlsweep package
    packaged = here / "conf"
    return packaged if (packaged / "config.yaml").is_file() else here.parent / "conf"


CONF = _package_conf()


def is_package_conf(entry: str) -> bool:
    """Whether a search-path entry (`/abs/conf`, `file:///abs/conf`) is the package's conf/."""
    return Path(entry.removeprefix("file://")).resolve() == CONF.resolve() if "://" not in entry.removeprefix(
        "file://") else False


def user_conf() -> Path:
    """The folder of the user's presets, whether or not it exists."""
    return Path(os.environ.get(ENV) or "conf").expanduser().resolve()


def clash(folder: Path) -> str | None:
    """Why `folder` cannot be searched before the package's configs, or None where it can."""
    found = [name for name in PRIMARY if (folder / name).is_file()]
    if not found:
        return None
    return (f"tlsweep: {folder} holds {' and '.join(found)}, the name of tlsweep's own primary config, which it "
            f"would replace. Keep your presets in group folders there ({folder.name}/data/, {folder.name}/model/, "
            f"{folder.name}/strategy/, {folder.name}/experiment/) and rename the file, or point tlsweep at another "
            f"folder: {ENV}=path/to/presets")


def user_searched(folder: Path | None = None) -> Path | None:
    """The user's folder where it is searched: it exists and is not the package's own conf/ (a run from the clone)."""
    folder = folder or user_conf()
    if not folder.is_dir() or folder == CONF.resolve():
        return None
    return folder


def default_choices() -> dict[str, str]:
    """The package's primary config's choice per group ({"data": "hymenoptera", ...})."""
    import yaml

    entries = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    return {k.removeprefix("optional "): str(v) for e in entries if isinstance(e, dict) for k, v in e.items()
            if v is not None and not k.startswith("override ")}


def presets_in_play(overrides: list[str]) -> list[str]:
    """For a config Hydra refused: which of the chosen options are the user's own files, each named by its path.

    Hydra's message names the config (`In 'data/xray'`) and the key; this names the file it came from."""
    folder = user_searched()
    if folder is None:
        return []
    chosen = default_choices()
    for line in overrides:
        key, sep, value = line.lstrip("+~").partition("=")
        if sep and "." not in key:  # a group (data=..., hydra/launcher=...), not a key
            chosen[key] = value
    out = []
    for group, values in chosen.items():
        for value in values.split(","):
            path = folder / group / f"{value.strip()}.yaml"
            if path.is_file():
                out.append(f"tlsweep: {group}={value.strip()} is your preset {path}")
    return out


def describe() -> str:
    """The search order, as `tlsweep --help` prints it."""
    folder = user_conf()
    state = ("searched first" if user_searched(folder) else
             "the package's own conf/" if folder == CONF.resolve() else "not there")
    # no "$": Hydra's help passes this through string.Template
    how = f"from {ENV}" if os.environ.get(ENV) else f"./conf of this directory; {ENV}=folder to change"
    return (f"  1. your presets: {folder} ({how}; {state})\n"
            f"  2. tlsweep's own: {CONF}")
