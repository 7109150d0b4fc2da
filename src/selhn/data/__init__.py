"""Data: readers of the precomp layout, image files, manifests and trunk activations; batches,
augmentation and vocabularies; the synthetic and sample data sets."""
