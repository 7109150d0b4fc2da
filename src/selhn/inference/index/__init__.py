"""Image collections indexed for search: encode once (``build``), search fast (``store``)."""
