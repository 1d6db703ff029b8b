"""download.py: resumable, md5-checked fetches from a local HTTP server, and archive extraction
that refuses every member that would leave the target folder (and then leaves nothing behind)."""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import stat
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.download import extract, fetch
from pipeline.errors import DownloadError, UnsafeArchiveError
from pipeline.files import md5_file

# --- a local HTTP server with switches for the failures fetch must survive ----------------------


@dataclass
class ServerState:
    """What the server serves and how it misbehaves; ``requests`` records (path, Range header)."""

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False  # always answer 200 with the whole body
    cut_after: int | None = None  # close the connection after this many body bytes
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    base: str = ""

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        state: ServerState = self.server.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        self.close_connection = True
        body = state.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        status, start = 200, 0
        if range_header and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        tail = body[start:]
        sent = tail if state.cut_after is None else tail[:state.cut_after]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if state.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(sent), sent))
            if state.cut_after is None:
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(tail)))  # the whole tail, even when cut
        self.end_headers()
        self.wfile.write(sent)

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def server() -> Iterator[ServerState]:
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = state
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- fetch ----------------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_skips_when_present(server, tmp_path):
    """A plain download lands at dest (no .part left); a second call does not ask the server."""
    data = payload(300_000)
    server.files["set.zip"] = data
    dest = tmp_path / "sub" / "set.zip"
    assert fetch(server.url("set.zip"), dest, md5=md5_of(data), timeout=5) == dest
    assert dest.read_bytes() == data
    assert not dest.with_name("set.zip.part").exists()
    assert len(server.requests) == 1
    assert fetch(server.url("set.zip"), dest, md5=md5_of(data), timeout=5) == dest
    assert fetch(server.url("set.zip"), dest, timeout=5) == dest  # no md5: presence is enough
    assert len(server.requests) == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_fetch_resumes_a_cut_download(server, tmp_path, chunked):
    """A connection cut halfway keeps the bytes in .part; the next call asks for the rest."""
    data = payload(200_000, seed=1)
    server.files["set.tar"] = data
    server.cut_after, server.chunked = 100_000, chunked
    dest = tmp_path / "set.tar"
    part = tmp_path / "set.tar.part"
    with pytest.raises(DownloadError, match="run again"):
        fetch(server.url("set.tar"), dest, md5=md5_of(data), timeout=5)
    assert not dest.exists()
    assert part.read_bytes() == data[:100_000]

    server.cut_after = None
    fetch(server.url("set.tar"), dest, md5=md5_of(data), timeout=5)
    assert server.requests[-1] == ("/set.tar", "bytes=100000-")
    assert dest.read_bytes() == data
    assert md5_file(dest) == md5_of(data)
    assert not part.exists()


def test_fetch_restarts_when_the_server_ignores_range(server, tmp_path):
    """A 200 answer to a Range request rewrites .part from the start instead of appending."""
    data = payload(50_000, seed=2)
    server.files["f.bin"] = data
    server.ignore_range = True
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(data[:20_000])
    fetch(server.url("f.bin"), dest, md5=md5_of(data), timeout=5)
    assert server.requests[-1][1] == "bytes=20000-"
    assert dest.read_bytes() == data


def test_fetch_complete_part_gets_416_and_is_renamed(server, tmp_path):
    """A .part that already holds every byte: the server answers 416, fetch verifies and renames."""
    data = payload(10_000, seed=3)
    server.files["f.bin"] = data
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(data)
    fetch(server.url("f.bin"), dest, md5=md5_of(data), timeout=5)
    assert server.requests == [("/f.bin", "bytes=10000-")]
    assert dest.read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()


def test_fetch_md5_mismatch_deletes_everything(server, tmp_path):
    """A wrong checksum: the error names both md5s, and neither dest nor .part is kept."""
    data = payload(5_000, seed=4)
    server.files["f.bin"] = data
    wrong = "0" * 32
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=f"{md5_of(data)}.*{wrong}"):
        fetch(server.url("f.bin"), dest, md5=wrong, timeout=5)
    assert sorted(tmp_path.iterdir()) == []


def test_fetch_existing_dest_with_wrong_md5(server, tmp_path):
    """A present file that does not match is not overwritten: the error says to delete it."""
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    with pytest.raises(DownloadError, match=f"{md5_of(b'stale')}.*delete it"):
        fetch(server.url("f.bin"), dest, md5="0" * 32, timeout=5)
    assert dest.read_bytes() == b"stale"
    assert server.requests == []


def test_fetch_http_404(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("missing.zip"), tmp_path / "missing.zip", timeout=5)
    assert not (tmp_path / "missing.zip").exists()


def test_fetch_unreachable_host(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/x"
    with pytest.raises(DownloadError, match=re.escape(url)):
        fetch(url, tmp_path / "x", timeout=5)
    assert not (tmp_path / "x").exists()


# --- extract --------------------------------------------------------------------------------------

TREE = {
    "pkg/readme.txt": b"hello\n",
    "pkg/deep/er/data.bin": payload(4_000, seed=5),
    "pkg/empty.txt": b"",
    "notes.txt": b"top-level file\n",
}


def make_zip(path: Path, tree: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in tree.items():
            zf.writestr(name, data)
    return path


def tar_member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
               linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data)
    return info, data


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def tar_tree(tree: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [tar_member(name, data) for name, data in tree.items()]


def read_tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (relative) with its content; None for folders."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


ARCHIVE_FORMATS = {
    "zip": lambda path, tree: make_zip(path.with_suffix(".zip"), tree),
    "tar": lambda path, tree: make_tar(path.with_suffix(".tar"), tar_tree(tree)),
    "tar.gz": lambda path, tree: make_tar(path.with_suffix(".tar.gz"), tar_tree(tree), "w:gz"),
    "tar.bz2": lambda path, tree: make_tar(path.with_suffix(".tar.bz2"), tar_tree(tree), "w:bz2"),
    "tar.xz": lambda path, tree: make_tar(path.with_suffix(".tar.xz"), tar_tree(tree), "w:xz"),
}


@pytest.mark.parametrize("fmt", list(ARCHIVE_FORMATS))
def test_extract_formats(tmp_path, fmt):
    """Every format unpacks nested folders with their content and returns the top-level entries."""
    archive = ARCHIVE_FORMATS[fmt](tmp_path / "a", TREE)
    dest = tmp_path / "out" / "dest"
    entries = extract(archive, dest)
    assert entries == [dest / "notes.txt", dest / "pkg"]
    files = {k: v for k, v in read_tree(dest).items() if v is not None}
    assert files == TREE
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest"]  # no temporary folder


def test_extract_merges_other_archives_and_replaces_the_same(tmp_path):
    """A second archive adds its top-level folders; re-extracting a folder replaces it whole."""
    dest = tmp_path / "dest"
    extract(make_zip(tmp_path / "one.zip", {"one/a.txt": b"a", "one/b.txt": b"b"}), dest)
    extract(make_tar(tmp_path / "two.tar", tar_tree({"two/c.txt": b"c"})), dest)
    assert read_tree(dest) == {"one": None, "one/a.txt": b"a", "one/b.txt": b"b",
                               "two": None, "two/c.txt": b"c"}
    extract(make_zip(tmp_path / "one-v2.zip", {"one/a.txt": b"A2"}), dest)
    assert read_tree(dest) == {"one": None, "one/a.txt": b"A2", "two": None, "two/c.txt": b"c"}


def zip_symlink(path: Path, name: str, target: str) -> Path:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr(info, target)
    return path


def four_files(path: Path) -> Path:
    return make_zip(path, {f"d/{i}.txt": b"x" for i in range(4)})


# name -> (build the archive at a path without suffix, text the error must contain, limits)
UNSAFE: dict[str, tuple[Callable[[Path], Path], str, dict]] = {
    "zip-dotdot": (lambda p: make_zip(p.with_suffix(".zip"), {"../evil.txt": b"x"}),
                   "'../evil.txt'", {}),
    "zip-absolute": (lambda p: make_zip(p.with_suffix(".zip"), {"/abs/evil.txt": b"x"}),
                     "'/abs/evil.txt'", {}),
    "zip-symlink-out": (lambda p: zip_symlink(p.with_suffix(".zip"), "a/link", "../../x"),
                        "'a/link'", {}),
    "zip-symlink-abs": (lambda p: zip_symlink(p.with_suffix(".zip"), "link", "/etc/passwd"),
                        "'link'", {}),
    "tar-dotdot": (lambda p: make_tar(p.with_suffix(".tar"),
                                      [tar_member("a/../../evil.txt", b"x")]),
                   "'a/../../evil.txt'", {}),
    "tar-absolute": (lambda p: make_tar(p.with_suffix(".tar"), [tar_member("/tmp/evil", b"x")]),
                     "'/tmp/evil'", {}),
    "tar-symlink-dotdot": (lambda p: make_tar(p.with_suffix(".tar"), [
        tar_member("a/link", kind=tarfile.SYMTYPE, linkname="../../etc/passwd")]), "'a/link'", {}),
    "tar-symlink-abs": (lambda p: make_tar(p.with_suffix(".tar"), [
        tar_member("link", kind=tarfile.SYMTYPE, linkname="/etc/passwd")]), "'link'", {}),
    "tar-hardlink-out": (lambda p: make_tar(p.with_suffix(".tar"), [
        tar_member("a/hard", kind=tarfile.LNKTYPE, linkname="../outside.txt")]), "'a/hard'", {}),
    "tar-hardlink-abs": (lambda p: make_tar(p.with_suffix(".tar"), [
        tar_member("hard", kind=tarfile.LNKTYPE, linkname="/etc/passwd")]), "'hard'", {}),
    "tar-fifo": (lambda p: make_tar(p.with_suffix(".tar"), [
        tar_member("ok.txt", b"fine"), tar_member("pipe", kind=tarfile.FIFOTYPE)]),
                 "'pipe' is a device or fifo", {}),
    "tar-chardev": (lambda p: make_tar(p.with_suffix(".tar"), [
        tar_member("dev/null", kind=tarfile.CHRTYPE)]), "'dev/null' is a device", {}),
    "too-many-members": (lambda p: four_files(p.with_suffix(".zip")),
                         "4 members, more than the limit of 3", {"max_members": 3}),
    "too-many-bytes": (lambda p: make_tar(p.with_suffix(".tar.gz"),
                                          [tar_member("big.bin", bytes(10_000))], "w:gz"),
                       "10000 bytes uncompressed, more than the limit of 1000",
                       {"max_bytes": 1000}),
}


@pytest.mark.parametrize("dest_exists", [True, False], ids=["dest-exists", "dest-new"])
@pytest.mark.parametrize("case", list(UNSAFE))
def test_extract_refuses_unsafe_archives_and_leaves_nothing(tmp_path, case, dest_exists):
    """The error names the member; dest is untouched (or still absent) and no temp folder stays."""
    build, message, limits = UNSAFE[case]
    (tmp_path / "archives").mkdir()
    archive = build(tmp_path / "archives" / "bad")
    parent = tmp_path / "out"
    dest = parent / "dest"
    if dest_exists:
        (dest / "old").mkdir(parents=True)
        (dest / "old" / "keep.txt").write_bytes(b"keep")
    else:
        parent.mkdir()
    before_parent, before_dest = sorted(parent.iterdir()), read_tree(dest)
    with pytest.raises(UnsafeArchiveError, match=re.escape(message)):
        extract(archive, dest, **limits)
    assert sorted(parent.iterdir()) == before_parent
    assert read_tree(dest) == before_dest
    assert not (tmp_path / "etc").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_extract_accepts_links_inside_the_target(tmp_path):
    """A symlink and a hard link that stay inside the target folder are fine."""
    archive = make_tar(tmp_path / "links.tar", [
        tar_member("a/b.txt", b"inside"),
        tar_member("a/link", kind=tarfile.SYMTYPE, linkname="b.txt"),
        tar_member("a/sub/up", kind=tarfile.SYMTYPE, linkname="../b.txt"),
        tar_member("a/hard", kind=tarfile.LNKTYPE, linkname="a/b.txt"),
    ])
    dest = tmp_path / "dest"
    assert extract(archive, dest) == [dest / "a"]
    assert (dest / "a" / "link").is_symlink()
    assert (dest / "a" / "link").read_bytes() == b"inside"
    assert (dest / "a" / "sub" / "up").read_bytes() == b"inside"
    assert (dest / "a" / "hard").read_bytes() == b"inside"

    zdest = tmp_path / "zdest"
    entries = extract(zip_symlink(tmp_path / "links.zip", "a/link", "b.txt"), zdest)
    assert entries == [zdest / "a", zdest / "ok.txt"]


def test_extract_rejects_other_files(tmp_path):
    """Neither zip nor tar: ValueError (and no dest, no temp folder); a missing archive:
    FileNotFoundError."""
    text = tmp_path / "in" / "notes.txt"
    text.parent.mkdir()
    text.write_text("just some text, not an archive\n" * 50)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="neither a zip nor a tar"):
        extract(text, tmp_path / "out" / "dest")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(FileNotFoundError, match=r"missing\.zip not found"):
        extract(tmp_path / "missing.zip", tmp_path / "out" / "dest")


# --- md5sum ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 17, 3 * 2**20 + 5])
def test_md5sum_matches_hashlib(tmp_path, size):
    data = payload(size, seed=size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert md5_file(path) == hashlib.md5(data).hexdigest()
