"""Reading images robustly, and the bundled sample photos.

Every loader returns an 8-bit RGB PIL image: grayscale, palette, RGBA/LA (alpha composited
on white), CMYK, 16-bit and float images are converted. An unreadable or corrupt file raises
:class:`ImageReadError` naming the file. An image above PIL's decompression-bomb warning limit
is read and evaluated, with one ``warning:`` line on stderr naming it (see :func:`load_image`).

:func:`path_text` is the one way camzoo turns a file path (or a part of one: an image id) into
text it prints, stores or draws.
"""
from __future__ import annotations

import os
import stat
import sys
import warnings
from typing import List, Tuple, Union

import numpy as np
from PIL import Image

SAMPLE_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera", "motorcycle_left")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file and the reason."""


def path_text(path: Union[str, bytes, os.PathLike]) -> str:
    """``path`` as text that can be printed, stored (SQLite, CSV, JSON) and drawn.

    Unchanged when it is valid Unicode. A file name holding bytes that are not UTF-8 (which
    Python keeps as lone surrogates, PEP 383: the name ``b"bad\\xff.jpg"`` is the str
    ``"bad\\udcff.jpg"``) gets each such byte written as ``%XX`` (two upper-case hex digits):
    ``"bad%FF.jpg"``. The escape stays inside one path component on every system (an id is
    also a file name: maps, figures). The same path always gives the same text, so ids made
    from it are stable across runs and resumes, and the original bytes can be read back from
    the escapes.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = os.fsencode(text)  # the name's bytes, as the file system has them
    except UnicodeEncodeError:  # a surrogate no file system decoding makes
        raw = text.encode("utf-8", "surrogatepass")
    return "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else c
                   for c in raw.decode("utf-8", "surrogateescape"))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB (high bit depths rescaled, alpha on white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            hi = 65535.0
        else:
            lo, hi_v = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = arr - min(lo, 0.0)
            hi = max(hi_v - min(lo, 0.0), 1e-12)
            if img.mode != "F" and hi_v <= 255 and lo >= 0:
                hi = 255.0
        arr8 = np.clip(np.round(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Read ``path`` as 8-bit RGB; raise :class:`ImageReadError` naming the file on failure.

    Only regular files are opened: a FIFO, device or socket (which could block the reader
    forever) is refused without being opened. Messages name the file by :func:`path_text`.

    An image of more pixels than PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``,
    89,478,485 by default; 10000x10000 is above it) but at most twice that is a large photo a
    researcher means to evaluate: it is read as usual, and instead of PIL's raw
    ``DecompressionBombWarning`` one line ``warning: <file> is WxH (N pixels) ...`` goes to
    stderr. Above twice the limit PIL refuses to decode it, and it is an :class:`ImageReadError`
    (unreadable, with PIL's reason). Raise ``PIL.Image.MAX_IMAGE_PIXELS`` (or set it to ``None``)
    to read larger images without either.
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ImageReadError(f"cannot read image {path_text(path)}: {type(exc).__name__}: "
                             f"{path_text(str(exc))}") from None
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a folder"
                if stat.S_ISDIR(mode) else "not a regular file")
        raise ImageReadError(f"cannot read image {path_text(path)}: it is {kind}, not a regular file (not opened)")
    try:
        with warnings.catch_warnings():
            # said once below, naming the file (PIL's own names neither file nor fix). The filter
            # list is the process's while the file is read; camzoo's other threads change none
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size = im.size
                im.load()
                rgb = to_rgb(im)
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageReadError(f"cannot read image {path_text(path)}: {type(exc).__name__}: "
                             f"{path_text(str(exc))}") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit and path not in _SAID_LARGE:
        _SAID_LARGE.add(path)  # once per file and process (a run's probe reads it again)
        sys.stderr.write(f"warning: {path_text(path)} is {size[0]}x{size[1]} ({size[0] * size[1]:,} "
                         f"pixels), more than PIL's decompression-bomb limit of {limit:,} pixels "
                         "(PIL.Image.MAX_IMAGE_PIXELS); read and evaluated as usual\n")
    return rgb


#: the large images :func:`load_image` has named on stderr in this process
_SAID_LARGE: set = set()


def sample_photos() -> List[Tuple[str, Image.Image]]:
    """scikit-image's bundled sample photos as ``(name, RGB image)`` pairs (offline)."""
    import skimage.data as skdata

    data_dir = os.path.dirname(skdata.__file__)
    out = []
    for name in SAMPLE_PHOTOS:
        # motorcycle_left has no loader function (it is half of stereo_motorcycle): read files
        files = [f for f in os.listdir(data_dir) if os.path.splitext(f)[0] == name]
        if not files:
            raise FileNotFoundError(f"scikit-image sample photo {name!r} not found in {data_dir}")
        out.append((name, load_image(os.path.join(data_dir, files[0]))))
    return out


def list_images(folder: Union[str, os.PathLike]) -> List[str]:
    """Image files directly inside ``folder`` (sorted), by extension."""
    folder = os.fspath(folder)
    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
    )
