"""DML step throughput, side by side: see `dml bench --help` (this script is the same program).

    python benchmarks/throughput.py                      # CPU: the quick profile
    python benchmarks/throughput.py --device cuda        # GPU: every case
    pip install pytorch-dml                              # to include the external peer

Results go to benchmarks/results/throughput-<device>.{json,md}.
"""

import sys

from dmlkit.bench import main

if __name__ == "__main__":
    sys.exit(main())
