"""The frozen part of a network, run once per sweep: its features cached, and what they say about the task.

- `cache`: where a strategy's frozen prefix ends, its features computed once (streamed past the budget) and shared
  by every job of a sweep, read back in batches (`cached_loaders`).
- `fold`: BatchNorm folded into the convolution before it, for the feature pass.
- `measures`: transferability measures of features and labels: LogME, k-NN and nearest-centroid accuracy.
- `scores`: a run's scores of its cached features, computed once per cache entry, before any training.
"""
