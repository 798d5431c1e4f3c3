"""`python -m tlsweep` / `tlsweep`: the Hydra entry point. All the work is in `run.run`."""
import signal

import hydra
from omegaconf import DictConfig

from .run import run


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run(cfg)["final_val_acc"]


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # a killed job (SIGTERM) ends its MLflow run as KILLED, like Ctrl-C


def cli() -> None:
    signal.signal(signal.SIGTERM, _sigterm)
    main()


if __name__ == "__main__":
    cli()
