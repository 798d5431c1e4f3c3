"""The names that the runs, the sweep and the report must agree on: logged keys, tag names, the
strategy list, the seed rule and how a key=value label is written.

Torch-free and pandas-free on purpose: the CLI, the tracking code and the report all read it, and a
rule kept here cannot drift between a writer and its reader.
"""
from __future__ import annotations

STRATEGY_KEY = "strategy.name"
DATASET_KEY = "data.name"
SHOTS_KEY = "data.shots"  # the decision figure's columns

LADDER = ("scratch", "probe", "partial", "finetune")  # the order of the paper's ladder
# Every strategy tlsweep ships (conf/strategy/<name>.yaml each), the ladder first: the order of tables
# and the index of each strategy's colour, so a new one goes at the end.
STRATEGIES = LADDER + ("lpft", "llrd", "gradual", "l2sp", "bitfit", "norm", "auto_rgn", "lora", "dora",
                       "score")
SCORE_STRATEGY = "score"  # the rung below probe: the frozen features' transferability scores, no training
# The transferability scores every frozen pass at the head logs (tlsweep/features/scores.py): `score/<name>` is the
# value (higher is better for each), `score_seconds/<name>` what computing it took, once per feature-cache entry
SCORES = ("logme", "knn_acc", "ncc_acc")
SCORE_PREFIX = "score/"
SCORE_SECONDS_PREFIX = "score_seconds/"
SELECT_IMAGES = "select_images"  # metric: the selection split's size, where the data has one
# metrics a static ranking of backbones reads, beside the scores: the weights' stated ImageNet top-1 (%), and the
# model's parameter count (the new head's included)
IMAGENET_TOP1, TOTAL_PARAMS = "imagenet_top1", "total_params"


class Tag:
    """MLflow tag names tlsweep writes on its runs (and reads back in the sweep and the report)."""
    ROLE = "tlsweep.role"  # "sweep" (the parent) or "job"
    SWEEP_NAME = "tlsweep.sweep_name"
    OVERRIDES = "tlsweep.overrides"
    SWEPT = "tlsweep.swept"
    CONFIG_KEY = "tlsweep.config_key"  # hash of the resolved config: what resume matches on
    ERROR = "tlsweep.error"  # the one-line reason a run FAILED
    # a FAILED run whose loss became NaN or infinite: "epoch 1, lr 1e+06 (head 1e+06, backbone 1e+05), train
    # loss nan". Such a config counts as done: resume skips it, the sweep's status and exit code treat it as ended
    DIVERGED = "tlsweep.diverged"
    # the process that runs a job (or, on the parent, launches the sweep): what tells an orphan from a live run.
    # PID_START is the process's start (clock ticks since boot, Linux), so that a reused pid is not taken for it
    HOST = "tlsweep.host"
    PID = "tlsweep.pid"
    PID_START = "tlsweep.pid_start"
    LAUNCHED = "tlsweep.launched"  # on the parent: when its current launching process took the sweep (ISO time)
    SLURM_JOB_ID = "tlsweep.slurm_job_id"
    GIT_DIRTY = "tlsweep.git_dirty"
    VERSION = "tlsweep.version"  # tlsweep.__version__ of the code that ran the job (or launched the sweep)
    WEIGHTS = "tlsweep.weights"
    WEIGHTS_SHA256 = "tlsweep.weights.sha256"
    DEVICE = "tlsweep.device"
    PREPROCESS = "tlsweep.preprocess"
    TRAINABLE_STAGES = "tlsweep.trainable_stages"
    DATA_VAL = "tlsweep.data.val"
    DATA_SELECT = "tlsweep.data.select"
    BAD_IMAGES = "tlsweep.data.bad_images"
    DECODE = "tlsweep.fast.decode_once"
    FEATURES = "tlsweep.fast.features"
    SCORES = "tlsweep.scores"  # where the transferability scores came from, and on which features
    BF16 = "tlsweep.fast.bf16"
    CHANNELS_LAST = "tlsweep.fast.channels_last"
    GROUP_PREFIX = "tlsweep.group."  # + the param group's name: its size, LR and weight-decay exemptions
    # an advise study's parent run: the config it recommends ("none" where it could not), why it stopped, and the
    # caution where the selection split is coarser than advise.margin
    ADVISE_RECOMMENDATION = "tlsweep.advise.recommendation"
    ADVISE_STOPPED = "tlsweep.advise.stopped"
    ADVISE_CAUTION = "tlsweep.advise.caution"
    # MLflow's own
    PARENT = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"
    NOTE = "mlflow.note.content"
    GIT_COMMIT = "mlflow.source.git.commit"


def diverged(tags: dict) -> bool:
    """A run that ended on a NaN or infinite loss: a candidate that is lost, not a failure to rerun."""
    return bool(tags.get(Tag.DIVERGED))


def last_part(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def is_seed(key: str) -> bool:
    """A seed param: `seed`, or a key whose last part ends in `_seed` (data.shots_seed)."""
    last = last_part(key)
    return last == "seed" or last.endswith("_seed")


def is_choice(key: str) -> bool:
    """A config group's option (model.name, data.name): its value speaks for itself."""
    return key.endswith(".name")


def short_labels(pairs: list[tuple[str, object]], sep: str = "=") -> list[str]:
    """`lr=0.0003` for ("optim.lr", 0.0003); a choice bare (`resnet18` for ("model.name", "resnet18")).
    The last part of a key stands for it unless two keys share it (then the whole key)."""
    last = [last_part(k) for k, _ in pairs]
    return [str(v) if is_choice(k) else f"{short if last.count(short) == 1 else k}{sep}{v}"
            for (k, v), short in zip(pairs, last)]
