"""Models: GPO pooling, the RVSE++ image and text encoders, and the joint model."""

from selhn.models.image import ResidualRegionEncoder
from selhn.models.pooling import GPO
from selhn.models.rvsepp import RVSEPP
from selhn.models.text import BiGRUTextEncoder

__all__ = ["GPO", "RVSEPP", "BiGRUTextEncoder", "ResidualRegionEncoder"]
