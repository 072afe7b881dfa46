"""What an encoded image is, from its bytes alone: its format, whether a JPEG was cut short, its size.

One place for the checks that the converters (`data.convert`), the service's uploads and item images
(`serving.service`, `serving.items`) apply to bytes before or instead of decoding them.
"""

from __future__ import annotations

import struct

# Formats tf.io.decode_image reads, by magic number: (short name, MIME type).
FORMATS = {
    b"\xff\xd8\xff": ("jpeg", "image/jpeg"),
    b"\x89PNG": ("png", "image/png"),
    b"GIF8": ("gif", "image/gif"),
    b"BM": ("bmp", "image/bmp"),
}


def image_format(data: bytes) -> str | None:
    """ "jpeg", "png", "gif" or "bmp" from the magic number; None for anything else."""
    for magic, (name, _) in FORMATS.items():
        if data.startswith(magic):
            return name
    return None


def media_type(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their magic number."""
    for magic, (_, mime) in FORMATS.items():
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


def truncated_jpeg(data: bytes) -> bool:
    """A JPEG without its end-of-image marker near the end: cut short. OpenCV and some browsers pad such a
    file with grey instead of failing, TensorFlow's decoder fails on it later."""
    return data.startswith(b"\xff\xd8") and b"\xff\xd9" not in data[-4096:]


def gif_layout(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, frames) of a GIF, from its block headers without decoding; None for another format.

    TensorFlow sizes a decoded GIF from its frames, not from the screen size in the header (a 1 x 1 screen
    may hold an 8000 x 8000 frame), and decodes every frame even when only the first is kept: width and
    height here are the largest of the screen's and every frame's extent (offset + size), and frames is
    the number of image descriptors before the trailer (or the first block that is none of a GIF's,
    where the decoder stops too)."""
    if not data.startswith(b"GIF8") or len(data) < 10:
        return None
    width, height = struct.unpack("<HH", data[6:10])
    frames = 0
    if len(data) < 13:
        return width, height, frames

    def skip_sub_blocks(i: int) -> int:
        while i < len(data) and data[i]:
            i += 1 + data[i]
        return i + 1

    i = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the global colour table
    while i < len(data):
        block = data[i]
        if block == 0x21:  # extension: label, then data sub-blocks
            i = skip_sub_blocks(i + 2)
        elif block == 0x2C and i + 10 <= len(data):  # image descriptor
            left, top, w, h, flags = struct.unpack("<HHHHB", data[i + 1 : i + 10])
            width, height, frames = max(width, left + w), max(height, top + h), frames + 1
            i += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the local colour table
            i = skip_sub_blocks(i + 1)  # after the LZW code size, the image data
        else:  # the trailer (0x3B), or bytes the decoder refuses
            break
    return width, height, frames


def dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, BMP or JPEG header without decoding; None when not found. A GIF's
    are the largest frame extent (`gif_layout`), what TensorFlow allocates per frame."""
    try:
        if data.startswith(b"\x89PNG") and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data.startswith(b"GIF8"):
            layout = gif_layout(data)
            return None if layout is None else layout[:2]
        if data.startswith(b"BM"):
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data.startswith(b"\xff\xd8"):
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                    i += 1 if marker == 0xFF else 2
                    continue
                # Start of frame: every SOFn but DHT (C4), JPG (C8) and DAC (CC) carries the size.
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    return w, h
                (length,) = struct.unpack(">H", data[i + 2 : i + 4])
                i += 2 + length
    except struct.error:
        return None
    return None
