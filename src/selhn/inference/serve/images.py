"""The server's image work: thumbnails of indexed files, and giving freed image memory back."""

import contextlib
import ctypes
import io

from PIL import Image

from selhn.data.image_files import TooManyPixels


def return_freed_memory() -> None:
    """Make large freed blocks go back to the system (glibc only; a no-op elsewhere).

    glibc raises its mmap threshold as large blocks are freed, after which blocks of a few MB
    (a decoded image's) come from its heaps and stay there when freed: a server that decoded
    a few large images at once stays that large. A fixed 1 MiB threshold maps every larger
    block on its own and unmaps it when it is freed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def thumbnail_jpeg(data: bytes, px: int, max_pixels: int) -> bytes:
    """A JPEG of at most ``px`` x ``px`` of an image file's bytes. A JPEG is decoded reduced
    (at most 1/8 of its pixels); another format is refused above ``max_pixels``."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.format != "JPEG" and width * height > max_pixels:
            raise TooManyPixels(f"{width} x {height} pixels; at most {max_pixels:,}")
        image.draft("RGB", (px, px))
        image = image.convert("RGB")
        image.thumbnail((px, px))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
    return out.getvalue()
