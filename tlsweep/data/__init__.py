"""Images in, batches out: a dataset by name or folder, its splits, its images decoded once, and the views a batch
sees of them.

- `pipeline`: a run's dataset from its config (`load`), kept in memory or on disk (`decode`), streamed past the
  budget (`streamed`), and its training and evaluation loaders (`loaders`).
- `sources`: datasets by name: torchvision's classification datasets, VTAB-1k style file lists, Hugging Face.
- `splits`: what a loaded dataset is, whatever its source (`ImageData`, `Split`), and its held-out parts.
- `images`: image files: which entries are images, one decoded to RGB, the screen of unreadable files.
- `decoded`: the decode-once store (uint8 tensors at the weights' resize), its streamed twin, and its loader.
- `augment`: the crops and flips a training batch sees, and the centred view an evaluation batch sees.
- `diskcache`: files the processes of a sweep share: made by one, waited for by the others, written whole.
"""
