"""PLY: ScanNet header, binary LE round trip, big-endian and ASCII reading, lists, bad input."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safnet_ros.data.ply import read_mesh, read_ply, read_vertex_labels, write_ply, write_scannet_mesh
from safnet_ros.errors import DataFormatError

SCANNET_HEADER = (
    "ply\nformat binary_little_endian 1.0\ncomment VCGLIB generated\nelement vertex {n}\n"
    "property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
    "property uchar blue\nproperty uchar alpha\n{label}element face {f}\n"
    "property list uchar int vertex_indices\nend_header\n"
)


@pytest.fixture()
def mesh():
    rng = np.random.default_rng(3)
    n, f = 500, 900
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    faces = rng.integers(0, n, size=(f, 3)).astype(np.int32)
    labels = rng.choice([0, 1, 2, 5, 39, 40, 17], size=n).astype(np.uint16)
    return xyz, rgb, faces, labels


def test_scannet_header_and_round_trip(tmp_path, mesh):
    xyz, rgb, faces, labels = mesh
    path = tmp_path / "scene0000_00_vh_clean_2.labels.ply"
    write_scannet_mesh(path, xyz, rgb, faces, labels=labels)
    data = path.read_bytes()
    header = SCANNET_HEADER.format(n=len(xyz), f=len(faces), label="property ushort label\n").encode()
    assert data.startswith(header)
    # vertex: 3*4 + 4 + 2 bytes; face: 1 + 3*4 bytes
    assert len(data) == len(header) + len(xyz) * 18 + len(faces) * 13
    x2, c2, f2 = read_mesh(path)
    np.testing.assert_array_equal(x2, xyz)
    np.testing.assert_array_equal(c2, rgb)
    np.testing.assert_array_equal(f2, faces)
    assert f2.dtype == np.int32 and x2.dtype == np.float32 and c2.dtype == np.uint8
    lab = read_vertex_labels(path)
    assert lab.dtype == np.uint16
    np.testing.assert_array_equal(lab, labels)
    ply = read_ply(path)
    assert ply.comments == ["VCGLIB generated"]
    assert (ply.elements["vertex"]["alpha"] == 255).all()


def test_mesh_without_labels_has_plain_header_and_label_error(tmp_path, mesh):
    xyz, rgb, faces, _ = mesh
    path = tmp_path / "m.ply"
    write_scannet_mesh(path, xyz, rgb, faces)
    assert path.read_bytes().startswith(SCANNET_HEADER.format(n=len(xyz), f=len(faces), label="").encode())
    with pytest.raises(DataFormatError, match=r"m.ply: has no vertex property 'label'"):
        read_vertex_labels(path)


def test_big_endian_all_scalar_types_and_int_list_count(tmp_path):
    types = ["char", "uchar", "short", "ushort", "int", "uint", "float", "double",
             "int8", "uint8", "int16", "uint16", "int32", "uint32", "float32", "float64"]
    codes = ["b", "B", "h", "H", "i", "I", "f", "d", "b", "B", "h", "H", "i", "I", "f", "d"]
    rows = [[-5, 200, -3000, 60000, -70000, 4000000000, 1.5, -2.25, 7, 8, 9, 10, 11, 12, 0.5, 1e-9],
            [5, 1, 3000, 1, 70000, 1, -1.5, 2.25, -7, 18, -9, 110, -11, 112, -0.5, -1e9]]
    header = ["ply", "format binary_big_endian 1.0", "comment made by hand", "element point 2"]
    header += [f"property {t} p{j}" for j, t in enumerate(types)]
    header += ["element face 2", "property list int uint vertex_indices", "end_header"]
    body = b"".join(struct.pack(">" + "".join(codes), *r) for r in rows)
    body += struct.pack(">i3I", 3, 0, 1, 1) + struct.pack(">i3I", 3, 1, 0, 0)
    path = tmp_path / "be.ply"
    path.write_bytes(("\n".join(header) + "\n").encode() + body)
    ply = read_ply(path)
    pts = ply.elements["point"]
    for j in range(len(types)):
        np.testing.assert_allclose(pts[f"p{j}"].astype(np.float64), [rows[0][j], rows[1][j]], rtol=1e-6)
        assert pts.dtype[f"p{j}"].isnative
    np.testing.assert_array_equal(ply.faces, [[0, 1, 1], [1, 0, 0]])
    assert ply.format == "binary_big_endian" and ply.comments == ["made by hand"]


def test_ascii_with_quads_and_triangles(tmp_path):
    text = """ply
format ascii 1.0
element vertex 5
property float x
property float y
property float z
property uchar red
property uchar green
property uchar blue
property ushort label
element face 2
property list uchar int vertex_indices
end_header
0 0 0 255 0 0 1
1 0 0 0 255 0 2
1 1 0 0 0 255 5
0 1 0.5 10 20 30 39
2 2 2 1 2 3 0
4 0 1 2 3
3 1 2 4
"""
    path = tmp_path / "a.ply"
    path.write_text(text)
    xyz, rgb, faces = read_mesh(path)
    np.testing.assert_array_equal(xyz[3], [0, 1, 0.5])
    np.testing.assert_array_equal(rgb[:, 2], [0, 0, 255, 30, 3])
    # the quad is fan-triangulated
    np.testing.assert_array_equal(faces, [[0, 1, 2], [0, 2, 3], [1, 2, 4]])
    np.testing.assert_array_equal(read_vertex_labels(path), [1, 2, 5, 39, 0])


def test_binary_mixed_polygons_take_the_slow_path(tmp_path):
    vertex = np.zeros(5, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    vertex["x"] = np.arange(5)
    head = ("ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\nproperty float y\n"
            "property float z\nelement face 3\nproperty list uchar int vertex_indices\nend_header\n")
    body = vertex.tobytes() + struct.pack("<B3i", 3, 0, 1, 2) + struct.pack("<B4i", 4, 0, 1, 2, 3) \
        + struct.pack("<B3i", 3, 2, 3, 4)
    path = tmp_path / "mixed.ply"
    path.write_bytes(head.encode() + body)
    ply = read_ply(path)
    np.testing.assert_array_equal(ply.faces, [[0, 1, 2], [0, 1, 2], [0, 2, 3], [2, 3, 4]])
    np.testing.assert_array_equal(ply.elements["vertex"]["x"], np.arange(5))


def test_bad_inputs_name_the_file(tmp_path, mesh):
    xyz, rgb, faces, labels = mesh
    not_ply = tmp_path / "x.ply"
    not_ply.write_bytes(b"PK\x03\x04 zip file")
    with pytest.raises(DataFormatError, match=r"x.ply: not a PLY file: missing 'ply' magic"):
        read_ply(not_ply)
    odd = tmp_path / "odd.ply"
    odd.write_bytes(b"ply\nformat binary_middle_endian 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(DataFormatError, match=r"odd.ply: unknown PLY format 'binary_middle_endian'"):
        read_ply(odd)
    good = tmp_path / "good.ply"
    write_scannet_mesh(good, xyz, rgb, faces, labels=labels)
    cut = tmp_path / "cut.ply"
    header_len = good.read_bytes().index(b"end_header\n") + len(b"end_header\n")
    cut.write_bytes(good.read_bytes()[:header_len + 100 * 18 + 5])
    with pytest.raises(DataFormatError, match=r"cut.ply: truncated PLY body: element 'vertex' needs 9000 bytes "
                                              r"\(500 x 18\), found 1805"):
        read_ply(cut)
    faces_cut = tmp_path / "faces_cut.ply"
    faces_cut.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(DataFormatError, match=r"faces_cut.ply: truncated PLY body: element 'face'"):
        read_ply(faces_cut)
    bad_index = tmp_path / "bad_index.ply"
    write_scannet_mesh(bad_index, xyz, rgb, np.array([[0, 1, 500]]))
    with pytest.raises(DataFormatError, match="bad_index.ply: face vertex indices span 0..500"):
        read_mesh(bad_index)


def test_write_ply_generic_fields(tmp_path):
    v = np.zeros(3, dtype=[("x", "f8"), ("flag", "i1"), ("id", ">u4")])
    v["x"], v["flag"], v["id"] = [0.1, 0.2, 0.3], [-1, 0, 1], [1, 2, 2**32 - 1]
    path = tmp_path / "g.ply"
    write_ply(path, v, None, comments=())
    assert b"property double x\nproperty char flag\nproperty uint id\nend_header\n" in path.read_bytes()
    back = read_ply(path)
    assert back.faces is None
    for name in ("x", "flag", "id"):
        np.testing.assert_array_equal(back.elements["vertex"][name], v[name])


_CODES = ["i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8"]


@settings(max_examples=25, deadline=None)
@given(codes=st.lists(st.sampled_from(_CODES), min_size=1, max_size=6), n=st.integers(0, 40),
       order=st.sampled_from(["<", ">"]), seed=st.integers(0, 2**31 - 1))
def test_any_scalar_types_round_trip_in_both_byte_orders(tmp_path_factory, codes, n, order, seed):
    rng = np.random.default_rng(seed)
    v = np.empty(n, dtype=[(f"p{j}", c) for j, c in enumerate(codes)])
    for j, c in enumerate(codes):
        info = np.iinfo(c) if c[0] in "iu" else None
        v[f"p{j}"] = rng.integers(info.min, info.max, n, endpoint=True) if info else rng.normal(size=n) * 1e3
    path = tmp_path_factory.mktemp("ply") / "r.ply"
    if order == "<":
        write_ply(path, v, None)
    else:  # hand-made big-endian file with the same header names
        names = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
                 "f4": "float", "f8": "double"}
        head = ["ply", "format binary_big_endian 1.0", f"element vertex {n}"]
        head += [f"property {names[c]} p{j}" for j, c in enumerate(codes)] + ["end_header"]
        be = v.astype([(f"p{j}", ">" + c) for j, c in enumerate(codes)])
        path.write_bytes(("\n".join(head) + "\n").encode() + be.tobytes())
    back = read_ply(path).elements["vertex"]
    assert back.dtype.names == v.dtype.names
    for name in v.dtype.names:
        np.testing.assert_array_equal(back[name], v[name])


def test_mesh_with_zero_faces_round_trips(tmp_path):
    from safnet_ros.data.ply import read_mesh, write_scannet_mesh

    xyz = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    rgb = np.full((5, 3), 7, np.uint8)
    path = tmp_path / "nofaces.ply"
    write_scannet_mesh(path, xyz, rgb, np.empty((0, 3), np.int32))
    out_xyz, out_rgb, faces = read_mesh(path)
    np.testing.assert_array_equal(out_xyz, xyz)
    assert faces.shape == (0, 3)
