"""`python -m tlsweep.report key=value ...`: print the summary table of a sweep (conf/report.yaml)."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from tlsweep.config.errors import ReportError
from tlsweep.imports import heavy
from tlsweep.config.searchpath import CONF

with heavy():
    from tlsweep.report.make import make_report


@hydra.main(version_base=None, config_path=str(CONF), config_name="report")
def main(cfg: DictConfig) -> None:
    """Print the table and where the files went; exit 2 on a ReportError."""
    args = OmegaConf.to_container(cfg, resolve=True)
    # The store is named with the run config's keys (tracking.uri, tracking.experiment): a bare
    # `experiment=` would be read by Hydra as the `experiment` config group of conf/.
    tracking = args.pop("tracking")
    try:
        report = make_report(tracking_uri=tracking["uri"], experiment=tracking["experiment"], **args)
    except ReportError as e:  # a user error: the message says it all, a traceback would bury it
        print(f"tlsweep.report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.markdown)
    print(f"Report written to {report.out_dir}/")


if __name__ == "__main__":
    main()
