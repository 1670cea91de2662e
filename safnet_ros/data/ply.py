"""PLY reading (binary little/big endian and ASCII) and ScanNet-style PLY writing.

ScanNet's meshes (``_vh_clean_2.ply``) and label meshes
(``_vh_clean_2.labels.ply``) are binary little-endian PLY with vertex
``x y z`` (float), ``red green blue alpha`` (uchar), for labels also ``label``
(ushort, the nyu40 id), and triangle faces ``list uchar int vertex_indices``.
The reader is general: any scalar property type (``char uchar short ushort int
uint float double`` and the ``int8 ... float64`` aliases) and list properties.
Elements without lists are parsed with one structured numpy dtype; elements
with lists take the same fast path when every row's lists have the length of
the first row's (all triangles), and fall back to a per-row loop otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from safnet_ros.errors import DataFormatError, MissingDataError

#: PLY scalar type name -> numpy type code (without byte order).
PLY_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
#: numpy type code -> the PLY type name ScanNet (VCGLIB) writes (the names without a size digit).
_NUMPY_TO_PLY: dict[str, str] = {code: name for name, code in PLY_TYPES.items() if not name[-1].isdigit()}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "ascii"}
#: Names under which faces store their vertex list.
FACE_LIST_NAMES = ("vertex_indices", "vertex_index")


@dataclass
class PlyProperty:
    """One property of an element; ``count_type`` is set for list properties."""

    name: str
    type: str                      # numpy code of the (item) type, e.g. "f4"
    count_type: str | None = None  # numpy code of the list length type, or None


@dataclass
class PlyElement:
    """An element declared in the header (``element vertex 123``) and its properties."""

    name: str
    count: int
    properties: list[PlyProperty] = field(default_factory=list)


@dataclass
class PlyData:
    """A parsed PLY file.

    ``elements`` maps element name -> structured array (one field per property,
    native byte order; a list property is a (count, L) sub-array field when all
    rows have L items, else an object field of 1-D arrays). ``faces`` is (F, 3)
    int32 triangles (polygons fan-triangulated) or None when there is no face
    element.
    """

    elements: dict[str, np.ndarray]
    faces: np.ndarray | None
    comments: list[str]
    format: str = "binary_little_endian"


def _parse_header(data: bytes, path: str) -> tuple[str, list[PlyElement], list[str], int]:
    """Return (format, elements, comments, offset of the body)."""
    if not data.startswith(b"ply"):
        raise DataFormatError(path, "not a PLY file: missing 'ply' magic on the first line")
    end = data.find(b"end_header")
    if end < 0:
        raise DataFormatError(path, "PLY header has no 'end_header' line")
    nl = data.find(b"\n", end)
    body_start = len(data) if nl < 0 else nl + 1
    try:
        lines = data[:end].decode("ascii").splitlines()
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"PLY header is not ASCII text: {exc}") from exc
    if lines[0].strip() != "ply":
        raise DataFormatError(path, f"not a PLY file: first line is {lines[0]!r}, expected 'ply'")
    fmt: str | None = None
    elements: list[PlyElement] = []
    comments: list[str] = []
    for lineno, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words:
            continue
        key = words[0]
        try:
            if key == "format":
                if words[1] not in _FORMATS:
                    raise DataFormatError(path, f"unknown PLY format {words[1]!r} (line {lineno}); expected "
                                                "ascii, binary_little_endian or binary_big_endian")
                fmt = words[1]
            elif key == "comment":
                comments.append(line.strip()[len("comment"):].strip())
            elif key == "obj_info":
                continue
            elif key == "element":
                count = int(words[2])
                if count < 0:
                    raise ValueError("negative count")
                if any(e.name == words[1] for e in elements):
                    raise DataFormatError(path, f"PLY header line {lineno}: element {words[1]!r} is declared twice")
                elements.append(PlyElement(words[1], count))
            elif key == "property":
                if not elements:
                    raise DataFormatError(path, f"PLY header line {lineno}: property before any element")
                if words[1] == "list":
                    prop = PlyProperty(words[4], _ply_type(words[3], path, lineno), _ply_type(words[2], path, lineno))
                else:
                    prop = PlyProperty(words[2], _ply_type(words[1], path, lineno))
                if any(p.name == prop.name for p in elements[-1].properties):
                    raise DataFormatError(path, f"PLY header line {lineno}: element {elements[-1].name!r} has "
                                                f"property {prop.name!r} twice")
                elements[-1].properties.append(prop)
            else:
                raise DataFormatError(path, f"PLY header line {lineno}: unknown keyword {key!r}")
        except (IndexError, ValueError) as exc:
            if isinstance(exc, DataFormatError):
                raise
            raise DataFormatError(path, f"PLY header line {lineno} is malformed: {line!r}") from exc
    if fmt is None:
        raise DataFormatError(path, "PLY header has no 'format' line")
    return fmt, elements, comments, body_start


def _ply_type(name: str, path: str, lineno: int) -> str:
    try:
        return PLY_TYPES[name]
    except KeyError:
        raise DataFormatError(path, f"PLY header line {lineno}: unknown property type {name!r}") from None


def _fixed_dtype(elem: PlyElement, order: str, list_lengths: Sequence[int] = ()) -> np.dtype:
    """Structured dtype of one row when every list property has the given lengths."""
    fields = []
    lengths = iter(list_lengths)
    for p in elem.properties:
        if p.count_type is None:
            fields.append((p.name, order + p.type))
        else:
            fields.append((f"__count_{p.name}", order + p.count_type))
            fields.append((p.name, order + p.type, (next(lengths),)))
    return np.dtype(fields)


def _native(arr: np.ndarray) -> np.ndarray:
    """Copy of a structured array in native byte order, without helper count fields."""
    names = [n for n in arr.dtype.names if not n.startswith("__count_")]
    out_dtype = np.dtype([(n, arr.dtype[n].newbyteorder("=")) if arr.dtype[n].shape == ()
                          else (n, arr.dtype[n].base.newbyteorder("="), arr.dtype[n].shape) for n in names])
    out = np.empty(arr.shape, dtype=out_dtype)
    for n in names:
        out[n] = arr[n]
    return out


def _read_binary_element(data: bytes, offset: int, elem: PlyElement, order: str, path: str) -> tuple[np.ndarray, int]:
    """Parse ``elem`` from ``data`` at ``offset``; return (array, offset after it)."""
    available = len(data) - offset
    if not any(p.count_type for p in elem.properties):
        dtype = _fixed_dtype(elem, order)
        need = elem.count * dtype.itemsize
        if need > available:
            raise DataFormatError(path, f"truncated PLY body: element '{elem.name}' needs {need} bytes "
                                        f"({elem.count} x {dtype.itemsize}), found {max(available, 0)}")
        arr = np.frombuffer(data, dtype=dtype, count=elem.count, offset=offset)
        return _native(arr), offset + need
    if elem.count == 0:
        return _native(np.empty(0, dtype=_fixed_dtype(elem, order, [0] * len(elem.properties)))), offset
    least = elem.count * sum(np.dtype(p.count_type or p.type).itemsize for p in elem.properties)
    if least > available:  # e.g. 10^12 faces declared in a small file: name it before allocating rows
        raise DataFormatError(path, f"truncated PLY body: element '{elem.name}' declares {elem.count} rows, which "
                                    f"need at least {least} bytes, found {max(available, 0)}")
    # Fast path: assume every row's lists are as long as the first row's.
    lengths = _first_row_list_lengths(data, offset, elem, order, path)
    dtype = _fixed_dtype(elem, order, lengths)
    need = elem.count * dtype.itemsize
    if need <= available:
        arr = np.frombuffer(data, dtype=dtype, count=elem.count, offset=offset)
        # Rows before the first mismatching count are parsed correctly, so checking
        # every count field finds any row whose length differs.
        uniform = all((arr[f"__count_{p.name}"] == n).all()
                      for p, n in zip([p for p in elem.properties if p.count_type], lengths))
        if uniform:
            return _native(arr), offset + need
    return _read_binary_rows(data, offset, elem, order, path)


def _first_row_list_lengths(data: bytes, offset: int, elem: PlyElement, order: str, path: str) -> list[int]:
    lengths = []
    pos = offset
    for p in elem.properties:
        size = np.dtype(p.type).itemsize
        if p.count_type is None:
            pos += size
            continue
        csize = np.dtype(p.count_type).itemsize
        if pos + csize > len(data):
            raise DataFormatError(path, f"truncated PLY body: element '{elem.name}' row 0 needs "
                                        f"{pos + csize - offset} bytes, found {len(data) - offset}")
        n = int(np.frombuffer(data, dtype=order + p.count_type, count=1, offset=pos)[0])
        if n < 0:
            raise DataFormatError(path, f"element '{elem.name}' row 0: negative list length {n}")
        lengths.append(n)
        pos += csize + n * size
    return lengths


def _read_binary_rows(data: bytes, offset: int, elem: PlyElement, order: str, path: str) -> tuple[np.ndarray, int]:
    """Slow path for ragged lists (e.g. quads mixed with triangles): one row at a time."""
    out = np.empty(elem.count, dtype=[(p.name, object if p.count_type else p.type) for p in elem.properties])
    columns: dict[str, list] = {p.name: [None] * elem.count for p in elem.properties}
    pos = offset
    end = len(data)
    for row in range(elem.count):
        for p in elem.properties:
            size = np.dtype(p.type).itemsize
            if p.count_type is None:
                if pos + size > end:
                    _truncated_rows(path, elem, row, pos, offset, end)
                columns[p.name][row] = np.frombuffer(data, dtype=order + p.type, count=1, offset=pos)[0]
                pos += size
            else:
                csize = np.dtype(p.count_type).itemsize
                if pos + csize > end:
                    _truncated_rows(path, elem, row, pos + csize, offset, end)
                n = int(np.frombuffer(data, dtype=order + p.count_type, count=1, offset=pos)[0])
                pos += csize
                if n < 0 or pos + n * size > end:
                    _truncated_rows(path, elem, row, pos + max(n, 0) * size, offset, end)
                columns[p.name][row] = np.frombuffer(data, dtype=order + p.type, count=n,
                                                     offset=pos).astype(p.type)
                pos += n * size
    for p in elem.properties:
        if p.count_type is None:
            out[p.name] = np.asarray(columns[p.name], dtype=p.type)
        else:
            col = np.empty(elem.count, dtype=object)
            col[:] = columns[p.name]
            out[p.name] = col
    return out, pos


def _truncated_rows(path: str, elem: PlyElement, row: int, need_end: int, offset: int, end: int) -> None:
    raise DataFormatError(path, f"truncated PLY body: element '{elem.name}' row {row} of {elem.count} "
                                f"needs {need_end - offset} bytes, found {end - offset}")


def _read_ascii(body: bytes, elements: list[PlyElement], path: str) -> dict[str, np.ndarray]:
    lines = [ln for ln in body.decode("ascii", errors="replace").splitlines() if ln.strip()]
    out: dict[str, np.ndarray] = {}
    pos = 0
    for elem in elements:
        rows = lines[pos:pos + elem.count]
        if len(rows) < elem.count:
            raise DataFormatError(path, f"truncated PLY body: element '{elem.name}' needs {elem.count} lines, "
                                        f"found {len(rows)}")
        try:
            if not any(p.count_type for p in elem.properties):
                arr = np.empty(elem.count, dtype=[(p.name, p.type) for p in elem.properties])
                table = np.array(" ".join(rows).split()).reshape(elem.count, len(elem.properties)) \
                    if elem.count else np.empty((0, len(elem.properties)), dtype=str)
                for j, p in enumerate(elem.properties):
                    arr[p.name] = _ascii_column(table[:, j], p.type)
            else:
                arr = _ascii_rows(rows, elem)
        except ValueError as exc:
            raise DataFormatError(path, f"element '{elem.name}' has a malformed ASCII row: {exc}") from exc
        out[elem.name] = arr
        pos += elem.count
    return out


def _ascii_column(tokens: np.ndarray, code: str) -> np.ndarray:
    if code[0] == "f":
        return tokens.astype(np.float64).astype(code)
    values = tokens.astype(np.float64)
    if not np.array_equal(values, np.round(values)):
        raise ValueError(f"non-integer value for an integer property ({code})")
    return values.astype(np.int64).astype(code)


def _ascii_rows(rows: list[str], elem: PlyElement) -> np.ndarray:
    columns: dict[str, list] = {p.name: [] for p in elem.properties}
    for row in rows:
        tokens = row.split()
        k = 0
        for p in elem.properties:
            if p.count_type is None:
                columns[p.name].append(tokens[k])
                k += 1
            else:
                n = int(tokens[k])
                columns[p.name].append(np.array(tokens[k + 1:k + 1 + n]))
                if len(columns[p.name][-1]) != n:
                    raise ValueError(f"list of {n} items has only {len(columns[p.name][-1])}")
                k += 1 + n
        if k != len(tokens):
            raise ValueError(f"row {row!r} has {len(tokens)} values, expected {k}")
    lengths = {p.name: {len(v) for v in columns[p.name]} for p in elem.properties if p.count_type}
    fields = []
    for p in elem.properties:
        if p.count_type is None:
            fields.append((p.name, p.type))
        elif len(lengths[p.name]) == 1:
            fields.append((p.name, p.type, (lengths[p.name].pop(),)))
        else:
            fields.append((p.name, object))
    arr = np.empty(len(rows), dtype=fields)
    for p in elem.properties:
        if p.count_type is None:
            arr[p.name] = _ascii_column(np.array(columns[p.name]), p.type)
        elif arr.dtype[p.name] is np.dtype(object):
            col = np.empty(len(rows), dtype=object)
            col[:] = [_ascii_column(v, p.type) for v in columns[p.name]]
            arr[p.name] = col
        else:
            arr[p.name] = _ascii_column(np.stack(columns[p.name]), p.type)
    return arr


def _faces_from(face: np.ndarray | None, path: str) -> np.ndarray | None:
    """(F, 3) int32 triangles from a face element (fan-triangulating polygons)."""
    if face is None:
        return None
    name = next((n for n in FACE_LIST_NAMES if n in (face.dtype.names or ())), None)
    if name is None:
        raise DataFormatError(path, "face element has no 'vertex_indices' list property")
    col = face[name]
    if len(face) == 0:  # a mesh with an empty face element (point cloud as PLY)
        return np.empty((0, 3), np.int32)
    if col.dtype != object:  # uniform lists, (F, L)
        if col.ndim == 1:
            col = col[:, None]
        if col.shape[1] < 3:
            raise DataFormatError(path, f"faces have {col.shape[1]} vertices each; need at least 3")
        if col.shape[1] == 3:
            return col.astype(np.int32)
        k = np.arange(1, col.shape[1] - 1)
        tris = np.stack([np.repeat(col[:, :1], len(k), axis=1), col[:, k], col[:, k + 1]], axis=-1)
        return tris.reshape(-1, 3).astype(np.int32)
    tris = []
    for i, poly in enumerate(col):
        poly = np.asarray(poly)
        if len(poly) < 3:
            raise DataFormatError(path, f"face {i} has {len(poly)} vertices; need at least 3")
        k = np.arange(1, len(poly) - 1)
        tris.append(np.stack([np.full(len(k), poly[0]), poly[k], poly[k + 1]], axis=-1))
    return np.concatenate(tris).astype(np.int32) if tris else np.empty((0, 3), np.int32)


def _ply_bytes(path: str | os.PathLike, limit: int = -1) -> tuple[bytes, str]:
    """(the first ``limit`` bytes (-1: all) of a PLY file, its path); MissingDataError when it is absent."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingDataError(path, "PLY file")
    with open(path, "rb") as f:
        return f.read(limit), path


def read_ply_comments(path: str | os.PathLike, limit: int = 65536) -> list[str]:
    """The header comments of a PLY file, reading at most ``limit`` bytes."""
    return _parse_header(*_ply_bytes(path, limit))[2]


def read_ply_counts(path: str | os.PathLike, limit: int = 65536) -> dict[str, int]:
    """Element name -> declared count from the header of a PLY file (reads at most ``limit`` bytes)."""
    return {e.name: e.count for e in _parse_header(*_ply_bytes(path, limit))[1]}


def read_ply(path: str | os.PathLike) -> PlyData:
    """Read a PLY file (binary LE/BE or ASCII) into structured arrays per element.

    Raises MissingDataError if the file does not exist and DataFormatError
    (naming the file) for a missing ``ply`` magic, an unknown format or type, or
    a truncated body (with expected and found bytes).
    """
    data, path = _ply_bytes(path)
    fmt, elements, comments, offset = _parse_header(data, path)
    if fmt == "ascii":
        arrays = _read_ascii(data[offset:], elements, path)
    else:
        order = _FORMATS[fmt]
        arrays = {}
        for elem in elements:
            arrays[elem.name], offset = _read_binary_element(data, offset, elem, order, path)
    return PlyData(elements=arrays, faces=_faces_from(arrays.get("face"), path), comments=comments, format=fmt)


def _ply_name(dtype: np.dtype, name: str) -> str:
    code = f"{dtype.kind}{dtype.itemsize}"
    try:
        return _NUMPY_TO_PLY[code]
    except KeyError:
        raise DataFormatError(None, f"vertex field {name!r} has dtype {dtype} with no PLY type") from None


def write_ply(path: str | os.PathLike, vertex: np.ndarray, faces: np.ndarray | None = None,
              comments: Sequence[str] = ("VCGLIB generated",)) -> None:
    """Write a binary little-endian PLY with ScanNet's header layout.

    ``vertex`` is a structured array (one field per property, in header order);
    ``faces`` is (F, 3) int triangles written as ``list uchar int vertex_indices``
    (no face element when None).
    """
    path = os.fspath(path)
    vertex = np.asarray(vertex)
    if vertex.dtype.names is None:
        raise DataFormatError(path, "vertex must be a structured array with one field per property")
    lines = ["ply", "format binary_little_endian 1.0"]
    lines += [f"comment {c}" for c in comments]
    lines.append(f"element vertex {len(vertex)}")
    le_fields = []
    for name in vertex.dtype.names:
        dt = vertex.dtype[name]
        if dt.shape != ():
            raise DataFormatError(path, f"vertex field {name!r} is not a scalar")
        lines.append(f"property {_ply_name(dt, name)} {name}")
        le_fields.append((name, dt.newbyteorder("<")))
    body = [vertex.astype(np.dtype(le_fields)).tobytes()]
    if faces is not None:
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise DataFormatError(path, f"faces must be (F, 3), got {faces.shape}")
        lines += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
        rows = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
        rows["n"] = 3
        rows["v"] = faces
        body.append(rows.tobytes())
    lines.append("end_header")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.writelines([("\n".join(lines) + "\n").encode("ascii"), *body])


def write_scannet_mesh(path: str | os.PathLike, xyz: np.ndarray, rgb: np.ndarray | None, faces: np.ndarray | None,
                       labels: np.ndarray | None = None) -> None:
    """Write a ScanNet ``_vh_clean_2.ply`` (labels None) or ``.labels.ply`` (labels = (N,) nyu40 ids).

    xyz (N, 3) metres, rgb (N, 3) uint8 (None: black), faces (F, 3) int vertex indices. Vertex
    fields as ScanNet's: x y z f4, red green blue alpha (255) u1, [label u2].
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise DataFormatError(None, f"xyz must be (N, 3), got {xyz.shape}")
    n = len(xyz)
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"),
              ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    if labels is not None:
        fields.append(("label", "u2"))
    v = np.empty(n, dtype=fields)
    v["x"], v["y"], v["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rgb = np.zeros((n, 3), np.uint8) if rgb is None else np.asarray(rgb)
    if rgb.shape != (n, 3):
        raise DataFormatError(None, f"rgb must be ({n}, 3), got {rgb.shape}")
    v["red"], v["green"], v["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    v["alpha"] = 255
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise DataFormatError(None, f"labels must be ({n},), got {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 65535):
            raise DataFormatError(None, "labels must fit in uint16 (0..65535)")
        v["label"] = labels
    write_ply(path, v, faces)


def _vertex(data: PlyData, path: str) -> np.ndarray:
    if "vertex" not in data.elements:
        raise DataFormatError(path, "PLY file has no 'vertex' element")
    return data.elements["vertex"]


def read_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a mesh: xyz (N, 3) float32, rgb (N, 3) uint8, faces (F, 3) int32 ((0, 3) if none).

    Raises DataFormatError when a coordinate or colour property is missing or a
    face refers to a vertex that does not exist.
    """
    path = os.fspath(path)
    data = read_ply(path)
    v = _vertex(data, path)
    for name in ("x", "y", "z", "red", "green", "blue"):
        if name not in (v.dtype.names or ()):
            raise DataFormatError(path, f"has no vertex property {name!r}")
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1)
    if rgb.dtype.kind == "f":  # some tools write colours as 0..1 floats
        rgb = np.clip(np.round(rgb * 255.0), 0, 255)
    rgb = rgb.astype(np.uint8)
    faces = data.faces if data.faces is not None else np.empty((0, 3), np.int32)
    if faces.size and (faces.min() < 0 or faces.max() >= len(xyz)):
        raise DataFormatError(path, f"face vertex indices span {faces.min()}..{faces.max()} "
                                    f"but the mesh has {len(xyz)} vertices")
    return xyz, rgb, faces


def read_vertex_labels(path: str | os.PathLike) -> np.ndarray:
    """Read the per-vertex ``label`` (nyu40 id) of a ``.labels.ply`` as (N,) uint16."""
    path = os.fspath(path)
    v = _vertex(read_ply(path), path)
    if "label" not in (v.dtype.names or ()):
        raise DataFormatError(path, "has no vertex property 'label'")
    labels = v["label"]
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise DataFormatError(path, f"vertex labels span {labels.min()}..{labels.max()}, outside uint16")
    return labels.astype(np.uint16)
