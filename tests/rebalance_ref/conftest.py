import struct
import zlib

import pytest
from PIL import Image


@pytest.fixture
def png_claiming():
    """Write a tiny 1 x 1 PNG whose header (IHDR, with a valid CRC) claims width x height pixels."""
    def write(path, width, height):
        Image.new("L", (1, 1), 0).save(path)
        data = bytearray(path.read_bytes())
        ihdr = 8 + 8  # signature, then the chunk's length and type
        data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
        data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
        path.write_bytes(bytes(data))
        return path
    return write
