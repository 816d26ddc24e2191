"""The data-set registry: resolution order, recorded hashes, verified download, and `kelm data`."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kelm.data import (
    DatasetSpec,
    FileSpec,
    bundled_path,
    get_spec,
    list_specs,
    locate,
    prepare,
    registry,
    resolve,
    resolve_types,
    sha256_file,
)
from kelm.errors import DatasetError


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the real cache; no mirror unless a test sets one."""
    cache = tmp_path / "cache-root"
    monkeypatch.setenv("KELM_CACHE_DIR", str(cache))
    monkeypatch.delenv("KELM_DATASET_MIRROR", raising=False)
    return cache


class _QuietHandler(SimpleHTTPRequestHandler):
    requested: list[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self.requested.append(self.path)
        super().do_GET()


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    """A real HTTP server on 127.0.0.1 serving a temp folder: (folder, base URL, requested paths)."""
    root = tmp_path / "served"
    root.mkdir()
    requested: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requested": requested})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _fake_copy(spec: DatasetSpec, folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in spec.files:
        (folder / f.name).write_text(f"{tag}\n", encoding="utf-8")
    return folder


def _serve_umls(root: Path) -> Path:
    served = root / "umls"
    shutil.copytree(bundled_path("umls"), served)
    return served


# resolution


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated_cache: Path) -> None:
    spec = get_spec("umls")
    explicit = _fake_copy(spec, tmp_path / "explicit" / "kg" / "umls", "explicit")
    env = _fake_copy(spec, tmp_path / "env" / "kg" / "umls", "env")
    cache = _fake_copy(spec, _isolated_cache / "datasets" / "umls", "cache")
    monkeypatch.setenv("KELM_DATA_DIR", str(tmp_path / "env"))

    assert resolve("umls", data_dir=tmp_path / "explicit") == explicit
    assert resolve("umls") == env
    shutil.rmtree(env)
    assert resolve("umls") == cache
    assert locate("umls").source == "cache"
    shutil.rmtree(cache)
    assert resolve("umls") == bundled_path("umls")
    assert locate("umls").source == "bundled"


def test_data_dir_accepts_name_folder_and_ignores_incomplete(tmp_path: Path) -> None:
    spec = get_spec("nations")
    by_name = _fake_copy(spec, tmp_path / "nations", "x")
    assert resolve("nations", data_dir=tmp_path) == by_name
    (by_name / "train.txt").unlink()
    with pytest.raises(DatasetError, match="missing train.txt"):
        resolve("nations", data_dir=tmp_path)


def test_bundled_umls_matches_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("KELM_DATA_DIR", str(empty))
    path = resolve("umls")
    assert path == bundled_path("umls")
    assert locate("umls").source == "bundled"
    for f in get_spec("umls").files:
        assert sha256_file(path / f.name) == f.sha256, f.name
    assert (path / "README.md").is_file()


def test_missing_dataset_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KELM_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        resolve("nations")
    msg = str(err.value)
    assert "kelm data prepare nations" in msg and str(tmp_path / "kg" / "nations") in msg
    assert "\n" not in msg


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(DatasetError, match="did you mean umls"):
        get_spec("umsl")
    with pytest.raises(DatasetError, match="codex-s"):
        resolve("codex_s")


def test_registry_entries_are_well_formed() -> None:
    names = [s.name for s in list_specs()]
    assert len(names) == len(set(names))
    for spec in list_specs():
        assert spec.kind in ("kg", "ner", "cls")
        assert spec.verified, spec.name
        assert spec.required, spec.name
        for f in spec.files:
            assert f.url.startswith("https://"), f.url
            assert f.sha256 is not None and len(f.sha256) == 64
    assert {"umls", "nations", "kinship", "codex-s", "codex-m", "codex-types", "wn18rr", "fb15k-237"} <= set(names)


# shared data


@pytest.mark.parametrize("name", [s.name for s in registry.list_specs()])
def test_shared_copy_matches_recorded_hashes(name: str, data_dir: Path) -> None:
    spec = get_spec(name)
    folder = data_dir / spec.subdir
    if not folder.is_dir():
        pytest.skip(f"{spec.subdir} is not in the shared data folder")
    on_disk = {p.name for p in folder.iterdir() if p.is_file()}
    assert on_disk == {f.name for f in spec.files}
    for f in spec.files:
        assert sha256_file(folder / f.name) == f.sha256, f"{spec.name}/{f.name}"
        assert (folder / f.name).stat().st_size == f.size
    assert resolve(name, data_dir=data_dir) == folder


def test_codex_types_resolve(data_dir: Path) -> None:
    if not (data_dir / "kg" / "codex-types").is_dir():
        pytest.skip("codex-types not in the shared data folder")
    assert resolve_types("codex-s", data_dir=data_dir) == data_dir / "kg" / "codex-types"
    assert resolve_types("umls", data_dir=data_dir) is None


# download


def test_prepare_downloads_and_verifies(
    http_root: tuple[Path, str, list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, url, requested = http_root
    _serve_umls(root)
    monkeypatch.setenv("KELM_DATASET_MIRROR", url)
    cache = tmp_path / "c"
    path = prepare("umls", cache_dir=cache)
    assert path == cache / "datasets" / "umls"
    for f in get_spec("umls").files:
        assert sha256_file(path / f.name) == f.sha256
    assert not list(path.glob(".*part"))
    assert len(requested) == len(get_spec("umls").files)

    prepare("umls", cache_dir=cache)  # everything present and verified: nothing fetched
    assert len(requested) == len(get_spec("umls").files)
    monkeypatch.setenv("KELM_CACHE_DIR", str(cache))
    monkeypatch.setenv("KELM_DATA_DIR", str(tmp_path / "nothing"))
    assert locate("umls").source == "cache"


def test_corrupted_download_is_discarded(
    http_root: tuple[Path, str, list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, url, _ = http_root
    served = _serve_umls(root)
    (served / "train.tsv").chmod(0o644)
    with open(served / "train.tsv", "a", encoding="utf-8") as fh:
        fh.write("C0000\tbogus\tC0001\n")
    monkeypatch.setenv("KELM_DATASET_MIRROR", url)
    cache = tmp_path / "c"
    with pytest.raises(DatasetError) as err:
        prepare("umls", cache_dir=cache)
    msg = str(err.value)
    expected = next(f.sha256 for f in get_spec("umls").files if f.name == "train.tsv")
    assert "train.tsv" in msg and expected in msg and sha256_file(served / "train.tsv") in msg
    target = cache / "datasets" / "umls"
    assert not (target / "train.tsv").exists()
    assert not [p for p in target.iterdir() if p.name.endswith(".part")]


def test_prepare_extracts_archive_members(
    http_root: tuple[Path, str, list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, url, requested = http_root
    members = {"train.txt": b"a\tr\tb\n", "test.txt": b"b\tr\ta\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for fn, data in members.items():
            info = tarfile.TarInfo(fn)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (root / "toy.tar.gz").write_bytes(buf.getvalue())
    (root / "LICENSE").write_text("toy license\n", encoding="utf-8")
    files = [FileSpec("LICENSE", f"{url}/LICENSE", sha256_file(root / "LICENSE"), optional=True)]
    for fn, data in members.items():
        (tmp_path / fn).write_bytes(data)
        files.append(FileSpec(fn, f"{url}/toy.tar.gz", sha256_file(tmp_path / fn), len(data), member=fn))
    toy = replace(get_spec("nations"), name="toy", subdir="kg/toy", files=tuple(files))
    monkeypatch.setitem(registry.REGISTRY, "toy", toy)

    path = prepare("toy", cache_dir=tmp_path / "c")
    for fn, data in members.items():
        assert (path / fn).read_bytes() == data
    assert requested.count("/toy.tar.gz") == 1
    assert not list(path.glob(".*part"))


def test_unverifiable_files_need_no_verify(
    http_root: tuple[Path, str, list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, url, requested = http_root
    (root / "data.txt").write_text("x\ty\tz\n", encoding="utf-8")
    unverified = FileSpec("data.txt", f"{url}/data.txt", None)
    toy = replace(get_spec("nations"), name="toy", subdir="kg/toy", files=(unverified,))
    monkeypatch.setitem(registry.REGISTRY, "toy", toy)
    with pytest.raises(DatasetError, match="--no-verify"):
        prepare("toy", cache_dir=tmp_path / "c")
    assert requested == []
    path = prepare("toy", cache_dir=tmp_path / "c", verify=False)
    assert (path / "data.txt").read_text(encoding="utf-8") == "x\ty\tz\n"


def test_unreachable_mirror_is_a_dataset_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KELM_DATASET_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(DatasetError, match="cannot download"):
        prepare("nations", cache_dir=tmp_path / "c")
    assert not [p for p in (tmp_path / "c" / "datasets" / "nations").iterdir()]


# CLI


def main(argv: list[str]) -> int:
    """``kelm.cli.main``, imported late so the library tests above run even if another command breaks."""
    from kelm.cli import main as cli_main

    return cli_main(argv)


def _one_line_error(capsys: pytest.CaptureFixture[str], rc: int) -> str:
    captured = capsys.readouterr()
    assert rc != 0
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_cli_list_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["data", "list", "--json", "--data-dir", str(tmp_path)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["umls"]["source"] == "bundled"
    assert rows["nations"]["source"] is None
    assert set(rows) == {s.name for s in list_specs()}


def test_cli_list_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "umls" in out and "bundled" in out and "not available" in out


def test_cli_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "umls", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["license"].startswith("Apache-2.0")
    assert {f["name"] for f in info["files"]} >= {"train.tsv", "LICENSE"}
    assert main(["data", "info", "codex-s"]) == 0
    out = capsys.readouterr().out
    assert "64f93b7f314f3936a6f65739721429db3f6a7c8f5a1e1104ec3bb544f7434f59" in out


def test_cli_info_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, main(["data", "info", "umsl"]))
    assert "did you mean umls" in line


def test_cli_list_bad_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = _one_line_error(capsys, main(["data", "list", "--data-dir", str(tmp_path / "nope")]))
    assert "--data-dir" in line


def test_cli_prepare_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    http_root: tuple[Path, str, list[str]],
) -> None:
    _, url, _ = http_root  # serves nothing: every file is a 404
    monkeypatch.setenv("KELM_DATASET_MIRROR", url)
    line = _one_line_error(capsys, main(["data", "prepare", "nations", "--cache-dir", str(tmp_path)]))
    assert "HTTP 404" in line
    line = _one_line_error(capsys, main(["data", "prepare", "nation"]))
    assert "did you mean nations" in line


def test_cli_prepare_ok(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    http_root: tuple[Path, str, list[str]],
) -> None:
    root, url, _ = http_root
    _serve_umls(root)
    monkeypatch.setenv("KELM_DATASET_MIRROR", url)
    assert main(["data", "prepare", "umls", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "umls is ready" in capsys.readouterr().out
    assert (tmp_path / "c" / "datasets" / "umls" / "train.tsv").is_file()
