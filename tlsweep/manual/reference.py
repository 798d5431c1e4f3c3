"""The reference parts of the manual, generated from the code: docs/configuration.md from the schema (each key's
type, default, range and help, tlsweep/config/rules.py), and the strategy and model-preset tables from conf/ as Hydra
composes it. tlsweep.manual writes them; tests/test_docs.py holds the strategy table's learning rates to
`recipes.Recipe.lr_scale`. Torch-free.
"""
from __future__ import annotations

import functools
from dataclasses import MISSING as NO_DEFAULT, fields
from enum import Enum
from typing import Callable

import yaml
from omegaconf import MISSING, OmegaConf

from ..config.advise import AdviseConf
from ..config.data import DATA_SCHEMAS
from ..config.keys import STRATEGIES
from ..config.rules import help_of, rule_of
from ..config.schema import STRATEGY_SCHEMAS, AnyStrategy, Config, ModelConf, SgdConf, TrackingConf
from ..config.searchpath import CONF, ENV

REGENERATE = "python -m tlsweep.manual"
GROUP_FIELDS = {"model", "strategy", "optim", "data", "tracking", "advise"}  # Config's fields that are groups


# ---- conf/ as composed ------------------------------------------------------------------------------------

def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def defaults() -> dict[str, str]:
    """conf/config.yaml's pick per group: {"data": "hymenoptera", ...}."""
    picks = {}
    for entry in yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            for k, v in entry.items():
                picks[k.replace("optional ", "").replace("override ", "")] = v
    return picks


@functools.lru_cache
def composed(group: str) -> dict[str, dict]:
    """Each option of `group` as Hydra composes it (its schema's defaults, then its YAML), interpolations resolved."""
    from hydra import compose, initialize_config_dir

    out = {}
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        for name in options(group):
            cfg = compose("config", overrides=[f"{group}={name}"])
            out[name] = OmegaConf.to_container(cfg[group], resolve=False, throw_on_missing=False)
    for values in out.values():  # ${.layer_decay} and the like: resolve within the group, as a job does
        for k, v in list(values.items()):
            if isinstance(v, str) and v.startswith("${."):
                values[k] = values[v[3:-1]]
    return out


def header(group: str, name: str) -> str:
    """The first sentence of an option's YAML header comment: what it is and where it comes from."""
    lines = []
    for line in (CONF / group / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#") or line.startswith("# @package"):
            if lines:
                break
            continue
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    depth, cut = 0, len(text)
    for i, ch in enumerate(text):  # up to the first ": " outside parentheses
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and text[i:i + 2] in (": ", ". ", "; "):
            cut = i
            break
    return text[:cut].rstrip(".")


# ---- the configuration reference --------------------------------------------------------------------------

def _value(v) -> str:
    if v is NO_DEFAULT or v == MISSING:
        return "required"
    if isinstance(v, Enum):
        v = v.value
    if v is None:
        return "`null`"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, float):
        return f"`{v:g}`"
    return f"`{v}`"


def _type(annotation) -> str:
    t = str(annotation).replace("typing.", "").replace(" | ", " or ")
    optional = t.startswith("Optional[")
    t = t[len("Optional["):-1] if optional else t
    t = {"Any": "any", "FreezeBN": "str", "BadImages": "str", "list[str]": "list of str"}.get(t, t)
    return t + (" or null" if optional else "")


def _allowed(f) -> str:
    rule = rule_of(f)
    if rule is not None:
        return rule.text
    default = f.default
    if isinstance(default, Enum):
        names = [m.value for m in type(default)]
        return ", ".join(names[:-1]) + " or " + names[-1]
    return ""


def _cell(text: str) -> str:
    """Text for a table cell: outside code spans, <, > and * are literal (train/<class>/*), not HTML or emphasis."""
    parts = str(text).replace("\n", " ").split("`")
    parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*") for p in parts[::2]]
    return "`".join(parts).replace("|", "\\|")


def _rows(prefix: str, schemas: list[type], skip: set[str] = frozenset(),
          extra: Callable[[str], str] | None = None) -> list[str]:
    """One row per key over `schemas` (their union, in order); a redefined key keeps the first help and rule."""
    seen: dict[str, list] = {}
    for schema in schemas:
        for f in fields(schema):
            if f.name in skip:
                continue
            if f.name not in seen:
                seen[f.name] = [f, help_of(f), _allowed(f)]
            seen[f.name][1] = seen[f.name][1] or help_of(f)
            seen[f.name][2] = seen[f.name][2] or _allowed(f)
    head = "| key | type | default | allowed | help |" + (" set by |" if extra else "")
    rows = [head, "|---" * (5 + bool(extra)) + "|"]
    for name, (f, help_, allowed) in seen.items():
        default = f.default_factory() if f.default is NO_DEFAULT and f.default_factory is not NO_DEFAULT else f.default
        cells = [f"`{prefix}{name}`", _type(f.type), _value(default), allowed, help_]
        rows.append("| " + " | ".join(_cell(c) for c in cells + ([extra(name)] if extra else [])) + " |")
    return rows


def _set_by(group: str, schemas: dict[str, type]) -> Callable[[str], str]:
    """The options of `group` that set a key to other than its schema default, with their values; and, for a
    key only some options have, which."""
    values = composed(group)
    default_of = {f.name: f.default for s in schemas.values() for f in fields(s)}

    def text(name: str) -> str:
        if name == "name":  # each option's own name
            return ""
        having = [o for o, v in values.items() if name in v]
        differ: dict[str, list[str]] = {}
        for o in having:
            v = values[o][name]
            d = default_of.get(name)
            if v != (d.value if isinstance(d, Enum) else d) and not (v == MISSING and d == MISSING):
                differ.setdefault("required" if v == MISSING else _value(v), []).append(o)
        parts = [f"{', '.join(os)}: {v}" for v, os in differ.items()]
        only = "" if len(having) == len(values) else f"only {', '.join(having)}"
        return "; ".join(p for p in [only, *parts] if p)
    return text


def configuration() -> str:
    """docs/configuration.md."""
    picks = defaults()
    groups = [("model", "any timm model, and the presets: [Models](models.md)"),
              ("strategy", "what trains, at which LR: [Strategies](strategies.md)"),
              ("optim", ""), ("data", "[Datasets](datasets.md)"),
              ("experiment", "presets of a whole sweep: `python -m tlsweep -m experiment=NAME`"),
              ("hydra/launcher", "besides Hydra's basic and joblib launchers: [The cluster](cluster.md)")]
    lines = ["# Configuration", "",
             f"<!-- generated by `{REGENERATE}` from tlsweep/config/schema.py, data.py, advise.py and "
             "conf/: do not edit -->", "",
             "`conf/config.yaml` picks one option per group; any key can be overridden on the command line "
             "(`python -m tlsweep optim.lr=3e-4 data.shots=10`) and swept with `-m` (`strategy=probe,finetune "
             "seed=0,1,2`). A value of the wrong type or a key that does not exist is refused when the config is "
             "composed, naming the key; a value out of its range (the *allowed* column) is refused before any data "
             "is read ([Errors](errors.md)). Each key's help and range are declared once, beside the key in the "
             "schema, and this page is generated from there.", "",
             "## Groups", "", "| group | options | default | |", "|---|---|---|---|"]
    for group, note in groups:
        lines.append(f"| `{group}` | {', '.join(f'`{o}`' for o in options(group))} | "
                     f"{_value(picks.get(group)) if picks.get(group) else 'none'} | {note} |")
    lines += ["", "## Your own presets", "",
              f"A folder of your own config groups is searched before tlsweep's: `./conf` of the directory you run "
              f"from, or the folder `{ENV}` names. A file `conf/<group>/<name>.yaml` there adds the option `<name>` "
              "to that group, or replaces tlsweep's option of that name; `tlsweep --help` prints both folders. It is "
              "composed against the same schema as tlsweep's own presets: a wrong type or an unknown key is refused, "
              "naming the key, and tlsweep names the file. A dataset of yours, in the repository of your project:",
              "", "```yaml", "# conf/data/xray.yaml", "defaults: [imagefolder]   # tlsweep's folder preset, then:",
              "root: /data/xray", "select_fraction: 0.2", "```", "",
              "```bash", "tlsweep -m data=xray model=efficientnet_lite0 strategy=probe,finetune seed=0,1,2", "```", "",
              "An experiment preset of yours starts with `# @package _global_`, like tlsweep's (`conf/experiment/`). "
              "The folder may not hold a `config.yaml` or `report.yaml`, tlsweep's own primary configs: tlsweep "
              f"refuses such a folder rather than compose another app's config; name another folder with `{ENV}`. "
              "A folder passed with Hydra's `--config-dir` is searched before both.",
              "", "## Top level", ""]
    lines += _rows("", [Config], skip=GROUP_FIELDS)
    lines += ["", "## tracking", ""] + _rows("tracking.", [TrackingConf])
    lines += ["", "## model", "", "Each preset sets `name`, `source` and `arch` ([Models](models.md) lists them).",
              ""] + _rows("model.", [ModelConf])
    lines += ["", "## strategy", "",
              "A strategy's schema holds only the keys it reads: *set by* names the strategies that have a key when "
              "not all do, and the values their YAML files give where they differ from the default "
              "([Strategies](strategies.md)).", ""]
    lines += _rows("strategy.", [AnyStrategy], extra=_set_by("strategy", STRATEGY_SCHEMAS))
    lines += ["", "## optim", ""] + _rows("optim.", [SgdConf], extra=_set_by("optim", {"sgd": SgdConf}))
    lines += ["", "## data", "",
              "Each data option extends the schema of its kind of source; *set by* names the options that have a "
              "key when not all do, and the values they give where they differ from the default "
              "([Datasets](datasets.md)).", ""]
    lines += _rows("data.", list(DATA_SCHEMAS.values()), extra=_set_by("data", DATA_SCHEMAS))
    lines += ["", "## advise", "", "The advisor's study, set by `experiment=advise` ([The advisor](advisor.md)).", ""]
    lines += _rows("advise.", [AdviseConf])
    return "\n".join(lines) + "\n"


# ---- tables from conf/ ---------------------------------------------------------------------------------------

def lr_multiplier(s: dict, k: int) -> float:
    """optim.lr's multiplier for stage (or layer) k from the top, as the page states it: what
    recipes.Recipe.lr_scale computes (tests/test_docs.py holds the two together)."""
    if not s.get("pretrained", True):
        return 1.0
    return s["backbone_lr_scale"] * s.get("layer_decay", 1.0) ** (k - 1)


ADAPTER_NAMES = {"lora": "LoRA", "dora": "DoRA"}


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("s" if n != 1 else "")


def _trains(s: dict) -> str:
    name = s["name"]
    if name == "score":
        return "nothing: probe's frozen pass, then the scores of its pre-logit features (`score/*`)"
    if not s["pretrained"]:
        return "everything, from random init"
    unfreeze = s["unfreeze"]
    if s.get("adapter"):
        what = (f"rank-{s['rank']} {ADAPTER_NAMES[s['adapter']]} adapters (alpha {s['alpha']:g}) on a frozen "
                "backbone, and the head")
    else:
        where = ("every stage" if unfreeze == "all" else "the last stage" if unfreeze is None else
                 "stages " + ", ".join(map(str, unfreeze)))
        params = {"all": "", "bias": "tensors named `bias`", "norm": "normalization layers' affine parameters",
                  "no_batchnorm": "everything but BatchNorm parameters"}[s.get("params", "all")]
        if unfreeze == []:
            what = "the head, on a frozen backbone"
        elif params:
            what = f"{params} (of {where}), and the head"
        else:
            what = "everything" if unfreeze == "all" else f"{where} and the head"
    if s.get("probe_epochs"):
        rest = (f"one more stage from the top every {_epochs(s['unfreeze_every']).removeprefix('1 ')}" if s.get("unfreeze_every")
                else what)
        what = f"the head alone for {_epochs(s['probe_epochs'])}, then {rest}"
    if s.get("l2sp_alpha") or s.get("l2sp_beta"):
        what += (f"; loss + α/2 ‖w − w₀‖² + β/2 ‖head‖² (α {s['l2sp_alpha']:g}, β {s['l2sp_beta']:g}), "
                 "in place of weight decay")
    return what


def _lr(s: dict) -> str:
    if s["name"] == "score":
        return "none"
    if not s["pretrained"]:
        return "`lr` everywhere"
    scale, decay = s["backbone_lr_scale"], s.get("layer_decay", 1.0)
    step = "layer" if s.get("granularity") == "layer" else "stage"
    if s.get("adapter"):
        return "adapters and head `lr`" if scale == 1 else f"adapters `lr × {scale:g}`, head `lr`"
    if s["unfreeze"] == []:
        return "head `lr`"
    if s.get("reweight") == "rgn":
        return (f"each pretrained tensor `lr × {scale:g} × rgn / max rgn`, rgn = ‖g‖/‖θ‖ over "
                f"{s['rgn_batches']} batches, every epoch; head `lr`")
    if decay != 1:
        k = f"{step} k from the top (k = 1: the last)"
        rate = f"`lr × {decay:g}^k`" if scale == decay else f"`lr × {scale:g} × {decay:g}^(k-1)`"
        return f"{k}: {rate}; head `lr`"
    if scale == 1:
        return "`lr`"
    return f"{'stage' if s['unfreeze'] is None else 'backbone'} `lr × {scale:g}`, head `lr`"


def strategy_table() -> str:
    values = composed("strategy")
    rows = ["| strategy | what trains | learning rate (`lr` = `optim.lr`) | BatchNorm in eval mode | recipe |",
            "|---|---|---|---|---|"]
    for name in STRATEGIES:
        s = values[name]
        bn = s["freeze_bn"].value if isinstance(s["freeze_bn"], Enum) else s["freeze_bn"]
        rows.append(f"| `{name}` | {_trains(s)} | {_lr(s)} | {bn} | {header('strategy', name)} |")
    return "\n".join(rows) + "\n"


def model_table() -> str:
    values = composed("model")
    rows = ["| preset | source | `model.arch` | weights (`model.weights=DEFAULT`) |", "|---|---|---|---|"]
    for name, m in values.items():
        if name == "timm":
            continue
        rows.append(f"| `{name}` | {m['source']} | `{m['arch']}` | {header('model', name)} |")
    return "\n".join(rows) + "\n"


