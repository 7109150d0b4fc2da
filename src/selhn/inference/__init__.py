"""A trained model in use: encoding strings and image files, indexing a collection, serving it."""
