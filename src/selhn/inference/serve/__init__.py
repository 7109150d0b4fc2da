"""A web page and a JSON API over an index (``app``, the ``serve`` extra)."""
