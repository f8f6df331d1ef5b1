"""Known data set names: resolution (--data-dir, $ADAPTERLAB_DATA, the cache) and `adapterlab data pull`, whose real
download code runs against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapterlab.cli import main
from adapterlab.data import catalog
from adapterlab.data.catalog import CATALOG, RemoteFile
from adapterlab.data.pull import download, file_digest, pull
from adapterlab.errors import DataPullError, MissingPathError, UsageError
from adapterlab.evaluate.datasets import KNOWN, find_file, load_dataset

RECORDS = [{"instruction": "What is 2 + 3?", "input": "", "output": "5", "answer": "5"}]
BODY = json.dumps(RECORDS).encode()
SHA = "sha256:" + hashlib.sha256(BODY).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path) -> Iterator[str]:
    """A static HTTP server on 127.0.0.1 (a free port) serving dataset/tiny/test.json; yields its base URL."""
    served = tmp_path / "served"
    (served / "dataset" / "tiny").mkdir(parents=True)
    (served / "dataset" / "tiny" / "test.json").write_bytes(BODY)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: what an offline machine sees."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty $ADAPTERLAB_HOME and no $ADAPTERLAB_DATA: the cache is the only place names resolve."""
    monkeypatch.setenv("ADAPTERLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ADAPTERLAB_DATA", raising=False)
    monkeypatch.delenv("ADAPTERLAB_DATA_URL", raising=False)
    return tmp_path / "home"


def tiny(digest: str = SHA) -> RemoteFile:
    return RemoteFile("math/gsm8k.json", "dataset/tiny/test.json", digest)


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_pull_downloads_checks_and_then_resolves_from_the_cache(server, home, monkeypatch):
    monkeypatch.setitem(CATALOG, "gsm8k", (tiny(),))
    monkeypatch.setenv("ADAPTERLAB_DATA_URL", server)
    logged: list[str] = []
    [path] = pull("gsm8k", log=logged.append)
    assert path == home / "datasets" / "math" / "gsm8k.json" and path.read_bytes() == BODY
    assert "sha256 checked" in logged[0]
    assert load_dataset("gsm8k").records == RECORDS  # the name now resolves to the cache
    monkeypatch.setenv("ADAPTERLAB_DATA_URL", "http://127.0.0.1:9")  # a second pull needs no network
    pull("gsm8k", log=logged.append)
    assert "already there" in logged[-1]


def test_git_blob_digests_are_checked_too(server, home):
    """Files the pinned snapshot did not hold are pinned by git's blob id: SHA-1 of 'blob <size>\\0' + bytes."""
    hello = home / "hello.txt"
    hello.parent.mkdir(parents=True)
    hello.write_bytes(b"hello\n")
    assert file_digest(hello, "git-sha1") == "git-sha1:ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object
    blob = "git-sha1:" + hashlib.sha1(b"blob %d\0" % len(BODY) + BODY).hexdigest()
    assert download(tiny(blob), home / "root", server).read_bytes() == BODY


@pytest.mark.reliability
def test_digest_mismatch_is_refused_and_leaves_nothing(server, home):
    """a downloaded data file whose sha256 is not the recorded one -> refused naming the URL, nothing left in the cache"""
    with pytest.raises(DataPullError, match=r"dataset/tiny/test.json has sha256:.*not the recorded sha256:0+;"):
        download(tiny("sha256:" + "0" * 64), home / "datasets", server)
    assert files_under(home) == [] and not (home / "datasets" / "math").exists()


@pytest.mark.reliability
def test_offline_pull_names_the_url_and_where_to_put_the_file(closed_port_url, home, capsys, monkeypatch):
    """data pull with no network (nothing listening) -> one line naming the URL and the path to save the file at by hand"""
    monkeypatch.setenv("ADAPTERLAB_DATA_URL", closed_port_url)
    assert main(["data", "pull", "gsm8k"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    target = home / "datasets" / "math" / "gsm8k.json"
    assert len(lines) == 1 and f"{closed_port_url}/dataset/gsm8k/test.json" in lines[0], lines
    assert f"save it as {target}" in lines[0] and "Traceback" not in lines[0]
    assert files_under(home) == []


@pytest.mark.reliability
def test_missing_file_on_the_server_is_one_line(server, home):
    """data pull of a file the server does not have (HTTP 404) -> DataPullError naming the URL, nothing written"""
    with pytest.raises(DataPullError, match=r"Could not download .*/dataset/nope.json \(HTTP 404 "):
        download(RemoteFile("math/x.json", "dataset/nope.json", SHA), home / "datasets", server)
    assert files_under(home) == []


@pytest.mark.reliability
def test_unknown_name_to_pull_is_refused(home, capsys):
    """data pull of a name not in the catalog -> one line listing the names, exit 2"""
    assert main(["data", "pull", "gsm9k"]) == 2
    err = capsys.readouterr().err
    assert "No data set 'gsm9k' to pull" in err and "gsm8k" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UsageError):
        pull("gsm9k")


def test_aliases_pull_their_known_name(server, home, monkeypatch):
    monkeypatch.setitem(CATALOG, "arc-e", (RemoteFile("commonsense/arc-easy.json", "dataset/tiny/test.json", SHA),))
    monkeypatch.setenv("ADAPTERLAB_DATA_URL", server)
    assert main(["data", "pull", "arc_easy", "--dest", str(home / "mine")]) == 0
    assert (home / "mine" / "commonsense" / "arc-easy.json").read_bytes() == BODY


def write_set(root: Path, records: list[dict]) -> None:
    (root / "math").mkdir(parents=True)
    (root / "math" / "gsm8k.json").write_text(json.dumps(records))


def test_resolution_order_data_dir_then_env_then_cache(tmp_path, home, monkeypatch):
    cache, env, given = home / "datasets", tmp_path / "env", tmp_path / "given"
    for root, answer in ((cache, "1"), (env, "2"), (given, "3")):
        write_set(root, [{"instruction": "q", "answer": answer}])
    assert find_file("gsm8k") == cache / "math" / "gsm8k.json"
    monkeypatch.setenv("ADAPTERLAB_DATA", str(env))
    assert find_file("gsm8k") == env / "math" / "gsm8k.json"
    assert find_file("gsm8k", [given / "math"]) == given / "math" / "gsm8k.json"
    (env / "math" / "gsm8k.json").unlink()  # not in $ADAPTERLAB_DATA: the cache still answers
    assert find_file("gsm8k") == cache / "math" / "gsm8k.json"


@pytest.mark.reliability
def test_known_name_found_nowhere_says_how_to_get_it(home):
    """eval of a known name found in neither $ADAPTERLAB_DATA nor the cache -> names both and `adapterlab data pull NAME`"""
    with pytest.raises(MissingPathError, match=r"found under none of \$ADAPTERLAB_DATA \(unset\), .*datasets; run "
                                               r"`adapterlab data pull svamp`"):
        find_file("SVAMP")


@pytest.mark.reliability
def test_adapterlab_data_naming_no_folder_is_refused(tmp_path, home, monkeypatch):
    """$ADAPTERLAB_DATA pointing at no folder -> MissingPathError naming the variable and its value"""
    monkeypatch.setenv("ADAPTERLAB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(MissingPathError, match=r"\$ADAPTERLAB_DATA=.*nowhere is no folder"):
        find_file("gsm8k")


def test_compare_tasks_resolve_through_the_same_roots(tmp_path, home, monkeypatch):
    from adapterlab.compare.tasks import resolve_task

    (home / "datasets" / "commonsense").mkdir(parents=True)
    for name in ("boolq.json", "train_boolq.json"):
        (home / "datasets" / "commonsense" / name).write_text("[]")
    assert resolve_task("boolq").train == home / "datasets" / "commonsense" / "train_boolq.json"
    with pytest.raises(MissingPathError, match="run `adapterlab data pull piqa`"):
        resolve_task("piqa")


def test_data_list_shows_where_each_name_resolves(home, capsys):
    write_set(home / "datasets", [{"instruction": "q", "answer": "1"}])
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert str(home / "datasets" / "math" / "gsm8k.json") in out
    assert "missing: adapterlab data pull svamp" in out


def test_catalog_is_pinned_and_covers_every_known_name():
    assert len(catalog.COMMIT) == 40 and catalog.COMMIT in catalog.BASE_URL
    for name, known in KNOWN.items():
        assert CATALOG[name][0].dest.endswith("/" + known.file), name  # where eval looks for it
    for files in CATALOG.values():
        for remote in files:
            kind, _, hexdigest = remote.digest.partition(":")
            assert (kind, len(hexdigest)) in (("sha256", 64), ("git-sha1", 40)), remote


def test_catalog_digests_match_the_real_files(real_datasets):
    """The files of ../shared/datasets are LLM-Adapters' published ones, byte for byte."""
    checked = 0
    for files in CATALOG.values():
        for remote in files:
            path = real_datasets / remote.dest
            if path.is_file():
                assert file_digest(path, remote.digest.partition(":")[0]) == remote.digest, path
                checked += 1
    assert checked >= 10
