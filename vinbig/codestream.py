"""Compressed DICOM frames bounded before they are decoded: decoders allocate what a codestream declares.

A JPEG 2000 (SIZ, COD, COC) or JPEG / JPEG-LS (SOF) codestream is read from its markers, without decoding, and must
declare the image of the DICOM header, in at most :data:`MAX_TILES` tiles, :data:`MAX_CODE_BLOCKS` code-blocks a tile
and :data:`MAX_PACKET_INDEX` packet index entries: a 1 KB file may otherwise make OpenJPEG or libjpeg allocate
gigabytes. :func:`check_codestream` raises :class:`CodestreamError` with the reason; :mod:`vinbig.dicom` calls it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import pydicom


class CodestreamError(ValueError):
    """A codestream that declares another image than its header, or more than vinbig decodes; the message says why."""


class UnboundedCodestream(CodestreamError):
    """A compressed transfer syntax whose decoder vinbig cannot bound (``args[0]``: the transfer syntax)."""


class _Frame(NamedTuple):
    """The image a codestream's frame header declares."""

    rows: int
    columns: int
    components: int
    precision: int
    tiles: int = 1  # JPEG 2000: the decoder sets up every tile's structures before it decodes any


# The most tiles a JPEG 2000 codestream may split its image into: OpenJPEG takes about 11 KB for each (a 3 KB file of
# 255 x 255 tiles of one pixel took 740 MB); encoders write one tile, or tiles of 256 pixels and more (168 for a
# 3000 x 3500 radiograph).
MAX_TILES = 4096
# The most code-blocks one JPEG 2000 tile may hold, and the most entries of its packet index (quality layers x
# resolutions x precincts of the fullest resolution). OpenJPEG sets up about 250 to 400 bytes for each code-block of a
# tile before it decodes it, and 2 bytes for each packet index entry, however few bytes the codestream holds:
# code-blocks of 4 x 4 (or precincts of 2 x 2, which cut every code-block to 1 x 1) in a 796-byte file of 3000 x 3000
# took 3.7 GB, and 65535 layers of 128 x 128 precincts at 7000 x 7000 took 2 GB. Encoders write code-blocks of 64 x 64
# (or 32 x 32) and one precinct per resolution (2^15): 12,000 code-blocks at MAX_PIXELS; the limits allow 8 x 8
# code-blocks there (820 MB peak in all, measured) and any number of layers of default precincts.
MAX_CODE_BLOCKS = 1_000_000
MAX_PACKET_INDEX = 1 << 24
# JPEG frame headers: SOF0-3, 5-7, 9-11, 13-15, JPEG-LS SOF55 (0xF7) and the DHP of hierarchical JPEG (0xDE), which
# all declare precision, rows, columns and components alike
_JPEG_FRAME_CODES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7,
                               0xDE})


def _jpeg_frames(src: bytes) -> list[_Frame]:
    """Every frame header of a JPEG or JPEG-LS codestream (ISO 10918-1 B.2, 14495-1 C.2): its marker segments are
    walked by their lengths, and the entropy-coded data between them skipped as a decoder skips it (0xFF followed by
    0x00 or a restart marker in JPEG, by a byte below 0x80 in JPEG-LS, is data)."""
    if src[:2] != b"\xff\xd8":
        raise CodestreamError("the JPEG pixel data does not start with an SOI marker; copy or download the file again")
    frames, pos, jpeg_ls = [], 2, False
    while (pos := src.find(b"\xff", pos)) >= 0 and pos + 4 <= len(src):
        code = src[pos + 1]
        if code == 0xFF:  # a fill byte before a marker
            pos += 1
            continue
        if code in (0x00, 0x01) or 0xD0 <= code <= 0xD7 or (jpeg_ls and code < 0x80):  # data, TEM or RSTn
            pos += 2
            continue
        if code == 0xD9:  # EOI
            break
        if code in _JPEG_FRAME_CODES and pos + 10 <= len(src):
            rows, columns = struct.unpack_from(">HH", src, pos + 5)
            frames.append(_Frame(rows, columns, src[pos + 9], src[pos + 4]))
            jpeg_ls = jpeg_ls or code == 0xF7
        elif code == 0xF8 and src[pos + 4:pos + 5] == b"\x04":  # JPEG-LS LSE 4: sizes beyond 65535
            raise CodestreamError("the JPEG-LS codestream declares its image size in an oversize-dimension (LSE) "
                             "segment, beyond the 65535 rows or columns a DICOM header can hold; re-export the file")
        pos += 2 + int.from_bytes(src[pos + 2:pos + 4], "big")
    return frames


def _j2k_start(src: bytes) -> int:
    """Where the JPEG 2000 codestream starts: 0, or in a JP2 file's codestream box where the frame is a JP2 file
    (which DICOM forbids, but decoders read)."""
    start = 0 if src[:2] == b"\xff\x4f" else None
    if src[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        pos = 0
        while start is None and pos + 8 <= len(src):
            length, kind = struct.unpack_from(">I4s", src, pos)
            head = 8
            if length == 1 and pos + 16 <= len(src):  # an 8-byte box length follows the type
                length, head = struct.unpack_from(">Q", src, pos + 8)[0], 16
            if kind == b"jp2c":
                start = pos + head
            elif length < head:  # 0: the last box, which runs to the end
                break
            pos += length
    if start is None or src[start:start + 4] != b"\xff\x4f\xff\x51" or len(src) < start + 43:
        raise CodestreamError("the JPEG 2000 pixel data does not start with an SOC and a SIZ marker; copy or download "
                         "the file again")
    return start


def _j2k_frame(src: bytes) -> _Frame:
    """The image the SIZ marker of a JPEG 2000 codestream declares (ISO 15444-1 A.5.1)."""
    start = _j2k_start(src)
    width, height, x0, y0, tile_width, tile_height, tx0, ty0 = struct.unpack_from(">8I", src, start + 8)
    components = struct.unpack_from(">H", src, start + 40)[0]
    tiles = -(-(width - tx0) // tile_width) * -(-(height - ty0) // tile_height) if tile_width and tile_height else 0
    return _Frame(height - y0, width - x0, components, (src[start + 42] & 0x7F) + 1, tiles)


class _Coding(NamedTuple):
    """The coding style of a JPEG 2000 COD or COC marker segment (ISO 15444-1 A.6.1, A.6.2)."""

    layers: int  # quality layers; 0 in a COC, which takes those of the COD
    levels: int  # decomposition levels: levels + 1 resolutions
    block: tuple[int, int]  # code-block width and height exponents
    precincts: tuple[tuple[int, int], ...]  # width and height exponents of each resolution's precincts


def _j2k_coding(body: bytes, coc: bool, components: int) -> _Coding:
    """A COD or COC segment's coding style (`body` follows its length)."""
    at = (2 if components > 256 else 1) if coc else 0  # Ccoc: the component
    layers = 0 if coc else int.from_bytes(body[2:4], "big")
    sp = body[at + 1 if coc else 5:]  # SPcod / SPcoc: levels, code-block width and height, style, transform, precincts
    if len(sp) < 5 or (body[at] & 1 and len(sp) < 6 + sp[0]):
        raise CodestreamError(f"the JPEG 2000 {'COC' if coc else 'COD'} marker is truncated; copy or download the file "
                         "again")
    precincts = tuple((b & 15, b >> 4) for b in sp[5:6 + sp[0]]) if body[at] & 1 else ((15, 15),) * (sp[0] + 1)
    return _Coding(layers, sp[0], (sp[1] + 2, sp[2] + 2), precincts)


def _j2k_codings(src: bytes, components: int) -> list[_Coding]:
    """Every COD and COC marker segment of a JPEG 2000 codestream: in its main header and in each tile-part header,
    found by their lengths as a decoder finds them (tile-parts by their Psot)."""
    codings, pos, tile_part = [], _j2k_start(src) + 2, False
    while pos + 4 <= len(src):
        code = src[pos + 1]
        if src[pos] != 0xFF or code in (0x90, 0x93, 0xD9):  # SOT, SOD, EOC end a header; SOD has no length
            if src[pos] == 0xFF and code == 0x90 and pos + 12 <= len(src):  # SOT: its header follows
                psot, tile_part, start = struct.unpack_from(">I", src, pos + 6)[0], True, pos
                pos += 12
                continue
            if not tile_part or code != 0x93 or psot == 0:
                break
            pos, tile_part = start + psot, False  # the next tile-part
            continue
        length = int.from_bytes(src[pos + 2:pos + 4], "big")
        if code in (0x52, 0x53):  # COD, COC
            codings.append(_j2k_coding(src[pos + 4:pos + 2 + length], code == 0x53, components))
        pos += 2 + length
    return codings


def _cdiv(size: int, exponent: int) -> int:
    return -(-size >> exponent)  # size / 2**exponent, rounded up


def _j2k_load(width: int, height: int, coding: _Coding, layers: int) -> tuple[int, int, int]:
    """What OpenJPEG sets up for a tile of `width` x `height` (wherever it starts) in `coding` with `layers`: an upper
    bound on its code-blocks (each precinct cuts them to half its size, or its size in the lowest resolution), the
    most precincts of a resolution, and the entries of its packet index (ISO 15444-1 B.5 to B.7)."""
    blocks, widest = 0, 0
    for r in range(coding.levels + 1):
        scale = coding.levels - r
        cols, rows = _cdiv(width, scale) + 1, _cdiv(height, scale) + 1  # the resolution, + 1 for its origin
        px, py = coding.precincts[r] if r < len(coding.precincts) else (15, 15)
        widest = max(widest, (_cdiv(cols, px) + 1) * (_cdiv(rows, py) + 1))
        bands, shrink = (1, 0) if r == 0 else (3, 1)  # LL, or HL, LH and HH of half the size
        bx, by = min(coding.block[0], max(px - shrink, 0)), min(coding.block[1], max(py - shrink, 0))
        blocks += bands * (_cdiv(cols >> shrink, bx) + 1 + shrink) * (_cdiv(rows >> shrink, by) + 1 + shrink)
    return blocks, widest, (layers + 1) * (coding.levels + 1) * widest


def _check_j2k_coding(src: bytes, ts) -> None:
    """A JPEG 2000 codestream's coding styles must keep the decoder's structures for its largest tile within
    :data:`MAX_CODE_BLOCKS` and :data:`MAX_PACKET_INDEX`: tiny code-blocks or precincts, or thousands of quality
    layers of many precincts, make OpenJPEG allocate gigabytes for a codestream of a few hundred bytes."""
    start = _j2k_start(src)
    width, height, x0, y0, tile_width, tile_height, tx0, ty0 = struct.unpack_from(">8I", src, start + 8)
    components = struct.unpack_from(">H", src, start + 40)[0]
    width, height = min(tile_width, width - x0), min(tile_height, height - y0)  # the largest tile
    codings = _j2k_codings(src, components)
    layers = max((c.layers for c in codings), default=1)
    for coding in codings:
        blocks, widest, index = _j2k_load(width, height, coding, layers)
        if blocks > MAX_CODE_BLOCKS:
            smallest = min(coding.precincts[1:] or coding.precincts)
            raise CodestreamError(f"the {ts.name} codestream codes its tiles of {width} x {height} pixels in code-blocks of "
                             f"{1 << coding.block[0]} x {1 << coding.block[1]} and precincts down to "
                             f"{1 << smallest[0]} x {1 << smallest[1]}: about {blocks} code-blocks a tile; vinbig "
                             f"decodes at most {MAX_CODE_BLOCKS} (the decoder takes memory for each): re-encode the "
                             "file with code-blocks of 64 x 64 and the default precincts")
        if index > MAX_PACKET_INDEX:
            raise CodestreamError(f"the {ts.name} codestream declares {layers} quality layers of up to {widest} precincts "
                             f"in each of {coding.levels + 1} resolutions (a packet index of {index} entries); vinbig "
                             f"decodes at most {MAX_PACKET_INDEX} (the decoder takes memory for each): re-encode the "
                             "file with fewer layers or the default precincts")


def check_codestream(ds: pydicom.Dataset) -> None:
    """A compressed frame must declare in its codestream the image of the header, before it is decoded: decoders
    allocate what the codestream declares (a 1 KB file whose JPEG 2000 SIZ or JPEG SOF says 30000 x 30000 takes
    gigabytes), and only then would the decoded shape be compared. RLE decodes to the header's Rows x Columns."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes, RLELossless

    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_encapsulated or ts == RLELossless:
        return
    if ts not in JPEG2000TransferSyntaxes + JPEGTransferSyntaxes + JPEGLSTransferSyntaxes:
        raise UnboundedCodestream(ts)  # a decoder vinbig cannot bound
    try:  # the first frame, as pydicom's decoders take it
        extended = ((ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths) if "ExtendedOffsetTable" in ds
                    else None)
        src = next(generate_frames(ds.PixelData, number_of_frames=1, extended_offsets=extended))
    except (StopIteration, ValueError, TypeError, AttributeError, EOFError, struct.error) as e:
        raise CodestreamError(f"the encapsulated pixel data is truncated or corrupt ({e or 'no frame'}); copy or "
                         "download the file again") from None
    frames = [_j2k_frame(src)] if ts in JPEG2000TransferSyntaxes else _jpeg_frames(src)
    if not frames:
        raise CodestreamError("the JPEG pixel data holds no frame header (SOF marker); copy or download the file again")
    rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    for frame in frames:
        if (frame.rows, frame.columns, frame.components) != (rows, columns, 1) or not 1 <= frame.precision <= bits:
            raise CodestreamError(f"the {ts.name} codestream declares {frame.rows} x {frame.columns} pixels "
                             f"({frame.components} component(s) of {frame.precision} bits), but the header Rows "
                             f"{rows} x Columns {columns} (1 sample of {bits} bits allocated): the file is corrupt "
                             "or forged; re-export it from its source")
        if not 1 <= frame.tiles <= MAX_TILES:
            raise CodestreamError(f"the {ts.name} codestream splits its image into {frame.tiles} tiles; vinbig decodes at "
                             f"most {MAX_TILES} (the decoder takes memory for each): re-export the file with one tile "
                             "or larger ones")
    if ts in JPEG2000TransferSyntaxes:
        _check_j2k_coding(src, ts)
