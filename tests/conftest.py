import sys
from pathlib import Path

import pytest

from selhn.data.samples import write_samples

# The benchmarks' baseline implementations are tested against the references here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="session")
def samples(tmp_path_factory):
    """manifest.jsonl of 14 photos + 40 train, 12 dev and 12 test digit-pair images."""
    return write_samples(tmp_path_factory.mktemp("samples"), train=40, dev=12, test=12)
