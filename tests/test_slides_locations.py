"""Where a slide lives: http, https, s3 and gs are remote; file:// is local; other schemes fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_ats.cohort.manifest import ManifestError, load_manifest
from wsi_ats.slides import SlideOpenError, open_slide
from wsi_ats.slides.locations import is_url, local_path, location_problem, url_scheme


@pytest.mark.parametrize(
    ("path", "scheme", "remote", "problem"),
    [
        ("/data/a.svs", None, False, False),
        ("slides/a.svs", None, False, False),
        ("C:\\slides\\a.svs", None, False, False),
        ("file:///data/a.svs", "file", False, False),
        ("http://host/a.zarr", "http", True, False),
        ("HTTPS://host/a.zarr", "https", True, False),
        ("s3://bucket/a.zarr", "s3", True, False),
        ("gs://bucket/a.zarr", "gs", True, False),
        ("ftp://host/a.svs", "ftp", False, True),
        ("memory://a.zarr", "memory", False, True),
        ("az://container/a.zarr", "az", False, True),
    ],
)
def test_location_rule(path: str, scheme: str | None, remote: bool, problem: bool) -> None:
    assert url_scheme(path) == scheme
    assert is_url(path) is remote
    assert (location_problem(path) is not None) is problem
    if problem:
        assert f"{scheme}://" in location_problem(path)
        assert "file:// is a local path" in location_problem(path)


def test_file_url_is_a_local_path() -> None:
    assert local_path("file:///data/a.svs") == "/data/a.svs"
    assert local_path("/data/a.svs") == "/data/a.svs"
    assert local_path("http://host/a.zarr") == "http://host/a.zarr"


def test_manifest_reads_file_urls_locally_and_refuses_other_schemes(tmp_path: Path) -> None:
    slide = tmp_path / "a.svs"
    slide.write_bytes(b"not read here")
    ok = tmp_path / "ok.csv"
    ok.write_text(f"slide_id,path\na,file://{slide}\nb,https://host/b.zarr\n")
    entries = load_manifest(ok).entries
    assert entries[0].path == str(slide) and entries[0].problem is None
    assert entries[1].path == "https://host/b.zarr"

    bad = tmp_path / "bad.csv"
    bad.write_text(f"slide_id,path\na,{slide}\nb,ftp://host/b.svs\nc,memory://c.zarr\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(bad)  # the default on_missing="error-row" does not soften a bad scheme
    lines = {p.line: p.message for p in info.value.problems}
    assert set(lines) == {3, 4}
    assert "b: unsupported URL scheme ftp://" in lines[3]
    assert "c: unsupported URL scheme memory://" in lines[4]


def test_open_slide_refuses_an_unsupported_scheme_before_any_read() -> None:
    with pytest.raises(SlideOpenError, match=r"ftp://host/a\.svs.*unsupported URL scheme ftp://"):
        open_slide("ftp://host/a.svs")
