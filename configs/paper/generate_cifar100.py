"""Regenerate configs/paper/cifar100_*.yaml from the recipes of `dml reproduce cifar100-table`.

The recipes live in dmlkit/experiments/cifar100.py (inside the installed package, where the
experiment needs them); these YAML files are their readable, commented copies. A test
(tests/test_cifar_reproduce.py) fails when a file differs from what this script writes.

    python configs/paper/generate_cifar100.py
"""

from pathlib import Path

from dmlkit.experiments.cifar100 import write_paper_configs

if __name__ == "__main__":
    for path in write_paper_configs(Path(__file__).resolve().parent):
        print(path)
