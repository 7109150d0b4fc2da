"""Models: GPO pooling, the RVSE++ encoders and model, the VSE++ baseline, a registry."""

from selhn.models.base import DualEncoder
from selhn.models.image import ResidualRegionEncoder
from selhn.models.pooling import GPO
from selhn.models.probe import Probe
from selhn.models.registry import ARCHITECTURES, create_model, model_class, register_model
from selhn.models.rvsepp import RVSEPP
from selhn.models.text import BiGRUTextEncoder
from selhn.models.vsepp import VSEPP

__all__ = [
    "ARCHITECTURES",
    "GPO",
    "RVSEPP",
    "VSEPP",
    "BiGRUTextEncoder",
    "DualEncoder",
    "Probe",
    "ResidualRegionEncoder",
    "create_model",
    "model_class",
    "register_model",
]
