"""Downloads (sha1-checked, resumable, retried) and safe extraction, against a real HTTP server on 127.0.0.1."""

import hashlib
import zipfile

import pytest

from bertnli import BertnliError
from bertnli.files import download, safe_extract


def _payload(n=300_000):
    return bytes(range(256)) * (n // 256)


def test_download_verifies_sha1(file_server, tmp_path):
    data = _payload()
    (file_server.root / "f.bin").write_bytes(data)
    out = download(f"{file_server.url}/f.bin", tmp_path / "f.bin", sha1=hashlib.sha1(data).hexdigest(), progress=False)
    assert out.read_bytes() == data
    n = len(file_server.requests)
    download(f"{file_server.url}/f.bin", tmp_path / "f.bin", sha1=hashlib.sha1(data).hexdigest(), progress=False)
    assert len(file_server.requests) == n  # verified file is not fetched again


def test_download_resumes_with_range_after_a_cut(file_server, tmp_path):
    data = _payload()
    (file_server.root / "f.bin").write_bytes(data)
    file_server.cut_after = 100_000
    out = download(
        f"{file_server.url}/f.bin", tmp_path / "f.bin", sha1=hashlib.sha1(data).hexdigest(), progress=False, backoff=0
    )
    assert out.read_bytes() == data
    assert file_server.requests[0]["range"] is None
    resumed_from = int(file_server.requests[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 100_000  # continued where the cut left it, not from zero


def test_sha1_mismatch_leaves_nothing_that_looks_valid(file_server, tmp_path):
    (file_server.root / "f.bin").write_bytes(_payload())
    with pytest.raises(BertnliError, match="expected 0000"):
        download(f"{file_server.url}/f.bin", tmp_path / "f.bin", sha1="0" * 40, progress=False)
    assert list(tmp_path.glob("f.bin*")) == []


def test_http_errors_retry_then_fail_clearly(file_server, tmp_path):
    data = _payload(1000)
    (file_server.root / "f.bin").write_bytes(data)
    file_server.fail_with = [500, 503]
    assert download(f"{file_server.url}/f.bin", tmp_path / "f.bin", progress=False, backoff=0).read_bytes() == data
    file_server.fail_with = [500] * 10
    with pytest.raises(BertnliError, match="after 3 attempts .HTTP 500"):
        download(f"{file_server.url}/f.bin", tmp_path / "g.bin", retries=2, progress=False, backoff=0)
    with pytest.raises(BertnliError, match="404"):
        file_server.fail_with = []
        download(f"{file_server.url}/missing.zip", tmp_path / "m.zip", progress=False)


def test_safe_extract_refuses_escaping_members(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../escaped.txt", "bad")
    with pytest.raises(BertnliError, match="escape"):
        safe_extract(z, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out").exists()
    notzip = tmp_path / "x.zip"
    notzip.write_bytes(b"not a zip at all")
    with pytest.raises(BertnliError, match="not a zip"):
        safe_extract(notzip, tmp_path / "out")
