"""``selhn features``: raw images -> the grid (and trunk activations) of a pretrained backbone,
stored in the precomp layout."""

from selhn.features.extract import FeatureJob, extract_features

__all__ = ["FeatureJob", "extract_features"]
