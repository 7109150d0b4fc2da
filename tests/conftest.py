import sys
from pathlib import Path

# The benchmarks' baseline implementations are tested against the references here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
