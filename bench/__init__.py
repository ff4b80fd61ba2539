"""Throughput benchmarks (`cli.py bench ...`), each against a baseline measured in the same run.

loader.py: the DALI training loader vs webdataset + DataLoader + NumPy; train.py: model alone vs end to end,
with FLOP/s utilisation; timing.py: the helpers both use. `gpu_check.sh` runs them on a GPU machine.
"""
