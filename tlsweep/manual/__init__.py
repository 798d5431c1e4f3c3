"""The manual's generated parts: `python -m tlsweep.manual` rewrites what is stale, `--check` names it.

- `pages`: which page holds which generated part, and the rewrite or check of them all.
- `reference`: the reference generated from the code: docs/configuration.md, the strategy and model-preset tables.
- `benchtables`: docs/speed.md's measured tables, from the benchmarks' committed result files.
- `advisortables`: docs/advisor.md's tables, from the advisor's measured grids and their replays.
"""
