"""Unpacking crafted, hostile layers on the host: nothing is ever written outside the layer
directory, every refusal names the member, and the digests are checked (root: chown, mknod and
trusted xattrs are what the unpacker does for real layers)."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.sandbox.images.layers import compress, digest, directory, hardlink, member, symlink, tar_bytes
from worker.sandbox.registry.config import LayerCaps
from worker.sandbox.registry.unpack import LayerError, UnpackedLayer, unpack_layer


@pytest.fixture()
def area(tmp_path: Path) -> Path:
    """``tmp/layer`` (the layer dir) beside ``tmp/outside`` (a directory an attacker aims at)."""
    require_root()
    (tmp_path / "layer").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "passwd").write_text("host\n")
    return tmp_path


def unpack(area: Path, blob: bytes, *, want: str | None = None, diff_id: str | None = None,
           caps: LayerCaps | None = None) -> UnpackedLayer:
    (area / "blob").write_bytes(blob)
    blob_fd = os.open(area / "blob", os.O_RDONLY)
    dest = os.open(area / "layer", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return unpack_layer(blob_fd, dest, digest=want or digest(blob), diff_id=diff_id, caps=caps)
    finally:
        os.close(blob_fd)
        os.close(dest)


def outside_untouched(area: Path) -> None:
    assert sorted(p.name for p in area.iterdir()) == ["blob", "layer", "outside"]
    assert [p.name for p in (area / "outside").iterdir()] == ["passwd"]
    assert (area / "outside" / "passwd").read_text() == "host\n"


@pytest.mark.parametrize("name", ["../passwd", "a/../../passwd", "./../outside/passwd", "x/../../../../etc/pwned"])
def test_dot_dot_members_are_refused(area, name):
    """A member with a ``..`` component fails the layer, naming it; nothing is written outside."""
    with pytest.raises(LayerError, match=r"'\.\.' component"):
        unpack(area, compress(tar_bytes([member("ok", b"1"), member(name, b"pwned\n")])))
    outside_untouched(area)


def test_absolute_members_land_inside_the_layer(area):
    """``/outside/passwd`` is the layer's own ``outside/passwd`` (as Docker reads it), never the host's."""
    target = str(area / "outside" / "passwd")
    unpack(area, compress(tar_bytes([member(target, b"layer\n"), member("/etc/motd", b"hi\n")])))
    assert (area / "layer" / target.lstrip("/")).read_text() == "layer\n"
    assert (area / "layer" / "etc" / "motd").read_text() == "hi\n"
    outside_untouched(area)


@pytest.mark.parametrize("link", ["ABS", "../outside", "../../", "."])
def test_a_symlink_is_never_written_through(area, link):
    """``a -> /etc`` then ``a/passwd``: the symlink is kept as data, the write through it refused."""
    target = str(area / "outside") if link == "ABS" else link
    blob = compress(tar_bytes([symlink("a", target), member("a/passwd", b"pwned\n")]))
    with pytest.raises(LayerError, match=r"member 'a/passwd' goes through 'a'.*not a directory"):
        unpack(area, blob)
    assert os.readlink(area / "layer" / "a") == target
    outside_untouched(area)


def test_a_symlink_planted_deeper_is_not_followed_either(area):
    blob = compress(tar_bytes([directory("d"), symlink("d/e", str(area / "outside")), member("d/e/f/g", b"x")]))
    with pytest.raises(LayerError, match="goes through 'd/e'"):
        unpack(area, blob)
    outside_untouched(area)


@pytest.mark.parametrize("target", ["ABS", "/etc/shadow", "../outside/passwd", "missing"])
def test_hard_links_reach_only_files_of_the_layer(area, target):
    """A hard link to a host path (absolute or ``..``) or to nothing the layer holds is refused."""
    link = str(area / "outside" / "passwd") if target == "ABS" else target
    with pytest.raises(LayerError, match=r"hard link|'\.\.' component"):
        unpack(area, compress(tar_bytes([member("x", b"1"), hardlink("h", link)])))
    assert os.stat(area / "outside" / "passwd").st_nlink == 1
    outside_untouched(area)


def test_a_hard_link_through_a_symlink_is_refused(area):
    blob = compress(tar_bytes([symlink("s", str(area / "outside")), hardlink("h", "s/passwd")]))
    with pytest.raises(LayerError, match="member 'h' goes through 's'"):
        unpack(area, blob)
    assert os.stat(area / "outside" / "passwd").st_nlink == 1


def test_a_hard_link_inside_the_layer_works_and_a_later_member_never_writes_through_it(area):
    """``h`` links ``etc/passwd``; a later regular ``h`` replaces the link, the original is unchanged."""
    blob = compress(tar_bytes([member("etc/passwd", b"root\n"), hardlink("h", "/etc/passwd")]))
    unpack(area, blob)
    assert os.stat(area / "layer" / "h").st_ino == os.stat(area / "layer" / "etc" / "passwd").st_ino
    (area / "layer" / "h").unlink()
    (area / "layer" / "etc" / "passwd").unlink()
    blob = compress(tar_bytes([member("etc/passwd", b"root\n"), hardlink("h", "etc/passwd"), member("h", b"new\n")]))
    unpack(area, blob)
    assert (area / "layer" / "etc" / "passwd").read_text() == "root\n"
    assert (area / "layer" / "h").read_text() == "new\n"


def test_device_nodes_are_not_kept_and_fifos_are_kept_without_being_opened(area):
    blob = compress(tar_bytes([
        member("dev/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        member("dev/sda", kind=tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660),
        member("dev/kmem", kind=tarfile.CHRTYPE, devmajor=1, devminor=2, mode=0o640),
        member("run/pipe", kind=tarfile.FIFOTYPE, mode=0o4644),
        member("run/pipe2", kind=tarfile.FIFOTYPE, mode=0o620),
    ]))
    layer = unpack(area, blob)
    assert not (area / "layer" / "dev" / "null").exists() and not (area / "layer" / "dev" / "sda").exists()
    assert any("3 device node(s) not kept" in note for note in layer.notes)
    st = os.lstat(area / "layer" / "run" / "pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644  # no setuid on a FIFO
    assert stat.S_IMODE(os.lstat(area / "layer" / "run" / "pipe2").st_mode) == 0o620


def test_setuid_files_are_kept_as_data(area):
    """The bits stay (a job's setuid root is its own namespace's root under no_new_privileges)."""
    blob = compress(tar_bytes([member("usr/bin/su", b"\x7fELF", mode=0o4755, uid=0),
                               member("usr/bin/wall", b"\x7fELF", mode=0o2755, uid=0, gid=5)]))
    unpack(area, blob)
    su = os.lstat(area / "layer" / "usr" / "bin" / "su")
    assert stat.S_IMODE(su.st_mode) == 0o4755 and su.st_uid == 0
    wall = os.lstat(area / "layer" / "usr" / "bin" / "wall")
    assert stat.S_IMODE(wall.st_mode) == 0o2755 and wall.st_gid == 5


def test_whiteouts_become_overlay_whiteouts(area):
    """``.wh.NAME`` is a 0/0 character device NAME; ``.wh..wh..opq`` the opaque xattr on its directory."""
    blob = compress(tar_bytes([
        directory("etc"), member("etc/.wh.motd"), directory("var/cache"), member("var/cache/.wh..wh..opq"),
        member("var/cache/kept", b"k"), member("usr/.wh..wh.plnk"),
    ]))
    layer = unpack(area, blob)
    st = os.lstat(area / "layer" / "etc" / "motd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(area / "layer" / "var" / "cache", "trusted.overlay.opaque") == b"y"
    assert (area / "layer" / "var" / "cache" / "kept").read_bytes() == b"k"
    assert not (area / "layer" / "etc" / ".wh.motd").exists()
    assert any("aufs" in note for note in layer.notes)


def test_a_whiteout_replaces_what_the_same_layer_had(area):
    blob = compress(tar_bytes([member("a/x", b"1"), member("a/.wh.x"), directory("b"), member("b/c", b"2"),
                               member(".wh.b")]))
    unpack(area, blob)
    assert stat.S_ISCHR(os.lstat(area / "layer" / "a" / "x").st_mode)
    assert stat.S_ISCHR(os.lstat(area / "layer" / "b").st_mode)


def test_xattrs_user_and_capabilities_kept_trusted_dropped(area):
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # cap_net_raw+ep
    blob = compress(tar_bytes([
        member("bin/ping", b"\x7fELF", mode=0o755, xattrs={"security.capability": cap, "user.note": b"hi"}),
        directory("d"),
        member("d/f", b"1", xattrs={"trusted.overlay.redirect": b"/etc", "trusted.overlay.opaque": b"y",
                                     "user.overlay.origin": b"x", "security.selinux": b"unconfined_u"}),
    ]))
    layer = unpack(area, blob)
    ping = area / "layer" / "bin" / "ping"
    assert os.getxattr(ping, "security.capability") == cap
    assert os.getxattr(ping, "user.note") == b"hi"
    f = area / "layer" / "d" / "f"
    for name in ("trusted.overlay.redirect", "trusted.overlay.opaque", "user.overlay.origin"):
        with pytest.raises(OSError):
            os.getxattr(f, name)
    assert any("trusted.overlay.redirect" in note for note in layer.notes)


def test_a_decompression_bomb_stops_at_the_cap(area):
    """64 MiB of zeros in ~64 KiB of gzip, against a 4 MiB cap: refused, and what was written goes."""
    raw = tar_bytes([member("zeros", bytes(64 << 20))])
    blob = compress(raw)
    assert len(blob) < 1 << 20
    with pytest.raises(LayerError, match="larger than 4194304 bytes uncompressed"):
        unpack(area, blob, caps=LayerCaps(max_bytes=4 << 20))
    outside_untouched(area)


def test_member_count_cap(area):
    blob = compress(tar_bytes([member(f"f{i}", b"") for i in range(50)]))
    with pytest.raises(LayerError, match="more than 20 members"):
        unpack(area, blob, caps=LayerCaps(max_members=20))


@pytest.mark.parametrize("members, kind, content", [
    ([member("x", b"1"), member("x", b"2")], "file", b"2"),
    ([member("x", b"1"), directory("x"), member("x/y", b"3")], "dir", None),
    ([directory("x"), member("x/y", b"3"), member("x", b"4")], "file", b"4"),
    ([member("x", b"1"), symlink("x", "/etc/passwd")], "link", None),
    ([symlink("x", "/etc/passwd"), member("x", b"5")], "file", b"5"),
])
def test_duplicate_members_the_later_wins(area, members, kind, content):
    unpack(area, compress(tar_bytes(members)))
    path = area / "layer" / "x"
    if kind == "file":
        assert not path.is_symlink() and path.read_bytes() == content
    elif kind == "dir":
        assert path.is_dir() and not path.is_symlink() and (path / "y").read_bytes() == b"3"
    else:
        assert os.readlink(path) == "/etc/passwd"
    outside_untouched(area)


def test_owners_outside_the_job_range_are_refused(area):
    with pytest.raises(LayerError, match="uid 70000"):
        unpack(area, compress(tar_bytes([member("f", b"1", uid=70000)])))


def test_a_digest_mismatch_is_refused(area):
    """The blob's bytes must hash to the manifest's digest, and the tar stream to the config's diff_id."""
    raw = tar_bytes([member("f", b"1")])
    blob = compress(raw)
    with pytest.raises(LayerError, match="does not match its digest"):
        unpack(area, blob, want="sha256:" + "0" * 64)
    with pytest.raises(LayerError, match="not the diff_id"):
        unpack(area, blob, diff_id="sha256:" + "1" * 64)
    layer = unpack(area, blob, diff_id=digest(raw))
    assert layer.diff_id == digest(raw) and layer.digest == digest(blob)


@pytest.mark.parametrize("how", ["gzip", "zstd", "none"])
def test_each_compression_unpacks_with_owners_modes_and_links(area, how):
    raw = tar_bytes([directory("usr/bin"), member("usr/bin/tool", b"#!/bin/sh\n", mode=0o750, uid=1000, gid=100),
                     symlink("bin", "usr/bin"), member("etc/ro", b"r", mode=0o400)])
    layer = unpack(area, compress(raw, how), diff_id=digest(raw))
    tool = os.lstat(area / "layer" / "usr" / "bin" / "tool")
    assert (tool.st_uid, tool.st_gid, stat.S_IMODE(tool.st_mode)) == (1000, 100, 0o750)
    assert os.readlink(area / "layer" / "bin") == "usr/bin"
    assert tool.st_mtime == 1_700_000_000
    assert layer.members == 4 and layer.size == len(b"#!/bin/sh\n") + 1


def test_concatenated_gzip_members_are_one_stream(area):
    """A blob of two gzip members (pigz, some registries) is one archive, hashed as a whole."""
    import gzip

    raw = tar_bytes([member("a", b"1" * 5000), member("b", b"2")])
    blob = gzip.compress(raw[:3000], mtime=0) + gzip.compress(raw[3000:], mtime=0)
    unpack(area, blob, diff_id=digest(raw))
    assert (area / "layer" / "b").read_bytes() == b"2"


def test_garbage_is_refused_with_a_sentence(area):
    with pytest.raises(LayerError, match="not a valid gzip tar archive"):
        unpack(area, b"\x1f\x8b" + os.urandom(200))


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_stream_damaged_mid_member_is_refused_and_its_decoder_ends(area, damage):
    """The decoding thread meets the damage while a member is being written: the writer gets the
    error at that point of the stream, as a sentence, and no decoding thread outlives the layer."""
    import threading

    raw = tar_bytes([member("a", os.urandom(3 << 20)), member("b", b"2")])
    blob = compress(raw)
    if damage == "cut":
        blob, expected = blob[: len(blob) // 2], "cut short"
    else:
        middle = len(blob) // 2
        blob, expected = blob[:middle] + bytes(b ^ 0xFF for b in blob[middle:middle + 64]) + blob[middle + 64:], \
            "not a valid gzip tar archive"
    with pytest.raises(LayerError, match=expected):
        unpack(area, blob, diff_id=digest(raw))
    assert not [t for t in threading.enumerate() if t.name == "sandpit-inflate"]
