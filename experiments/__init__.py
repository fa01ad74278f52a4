"""The experiments around pcs, one package per job, cut as Flax's examples are.

- :mod:`experiments.vision`: the absl binary that sparsifies image and 1-D classifiers
  (mnist1d offline, CIFAR, ImageNet), its configs and ``make demo``;
- :mod:`experiments.charlm`: the character language model (NNX transformer) binary and
  the trained-model study;
- :mod:`experiments.quality`: the quality benchmark (``make quality``), which runs the
  binaries, picks each recipe's setting on validation and writes QUALITY.md;
- :mod:`experiments.regression`: the diagonal-network study of the paper's theory;
- :mod:`experiments.common`: what the binaries share (optimizers, phases, collapse and
  failure checks, config checks, checkpoints, sharding, the offline datasets).

The binaries do not import the benchmark; the benchmark imports the binaries.
"""
