"""Regenerate configs/paper/*.yaml from the recipes of `dml reproduce`.

The recipes live in dmlkit/experiments/cifar100.py and market1501.py (inside the installed
package, where the experiments need them); these YAML files are their readable, commented
copies. Tests (tests/test_cifar_reproduce.py, tests/test_reid_experiments.py) fail when a file
differs from what this script writes.

    python configs/paper/generate.py
"""

from pathlib import Path

from dmlkit.experiments import cifar100, market1501
from dmlkit.experiments.recipes import write_paper_configs

if __name__ == "__main__":
    configs = [*cifar100.paper_configs(), *market1501.paper_configs()]
    for path in write_paper_configs(Path(__file__).resolve().parent, configs):
        print(path)
