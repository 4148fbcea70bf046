"""Everything in a root is backed up, excluded or reported (docs/awkward-trees.md).

Files lying directly in a root and symlinked subfolders were skipped without a
word. They are problems of the run (exit 1, stderr, the problems table, the
Teams card) until backup.exclude names them or, for symlinked subfolders,
backup.follow_root_symlinks backs up their target under the link's own path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import Setup, latest_versions


def _key(path: Path | str) -> str:
    return str(path).lstrip("/")


def _problems(setup: Setup) -> list[tuple[str | None, str]]:
    return [
        (row[0], row[1])
        for row in setup.db(
            "SELECT path, message FROM problems WHERE run_id = (SELECT max(id) FROM runs) "
            "ORDER BY id"
        )
    ]


def _folders(setup: Setup) -> list[str]:
    return [row[0] for row in setup.db("SELECT path FROM folders ORDER BY path")]


def _hook(setup: Setup, httpserver: Any) -> None:
    httpserver.expect_request("/hook").respond_with_data("", status=202)
    setup.write_config(notification__webhook=httpserver.url_for("/hook"))


def test_loose_files_and_symlinked_subfolders_are_reported_until_excluded(
    setup: Setup, s3: Any, httpserver: Any
) -> None:
    root = setup.images / "archive"
    setup.file("archive/Wien/a.tif", b"a")
    setup.file("archive/liesmich.txt", b"read me")
    setup.file("archive/new\nline.tif", b"odd name")
    elsewhere = setup.tmp / "other-disk" / "Graz"
    elsewhere.mkdir(parents=True)
    (elsewhere / "g.tif").write_bytes(b"g")
    (root / "Graz").symlink_to(elsewhere)
    _hook(setup, httpserver)
    setup.write_config(backup__roots=[str(root)])

    result = setup.run()

    assert result.returncode == 1, result.stderr
    problems = dict(_problems(setup))
    assert set(problems) == {
        str(root / "Graz"),
        str(root / "liesmich.txt"),
        str(root / "new\\x0aline.tif"),  # escaped: one line in the log, stderr and card
    }
    assert (
        "symlinked subfolder (-> " + str(elsewhere) + ") is not backed up"
        in (problems[str(root / "Graz")])
    )
    assert "backup.follow_root_symlinks" in problems[str(root / "Graz")]
    assert "lying directly in the root is not backed up" in problems[str(root / "liesmich.txt")]
    assert "new\\x0aline.tif" in result.stderr and "new\nline" not in result.stderr
    card = json.dumps(httpserver.log[-1][0].get_json())
    assert "liesmich.txt" in card and "Graz" in card and "new\\\\x0aline.tif" in card
    assert _folders(setup) == [str(root / "Wien")]
    assert set(latest_versions(s3, setup.bucket(root / "Wien"))) == {_key(root / "Wien/a.tif")}

    # The administrator excludes them: by name, or by absolute path for one entry of a root.
    setup.write_config(
        backup__exclude=["*.txt", "new?line.tif", str(root / "Graz")],
    )
    result = setup.run()

    assert result.returncode == 0, result.stderr
    assert _problems(setup) == []
    assert _folders(setup) == [str(root / "Wien")]


def test_follow_root_symlinks_backs_up_the_target_under_the_links_path(
    setup: Setup, s3: Any
) -> None:
    root = setup.images / "archive"
    setup.file("archive/Wien/a.tif", b"a")
    elsewhere = setup.tmp / "other-disk" / "Graz"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "g.tif").write_bytes(b"g")
    (elsewhere / "sub" / "h.tif").write_bytes(b"h")
    (elsewhere / "sub" / "escape").symlink_to(setup.images)  # below the top: not followed
    (root / "Graz").symlink_to(elsewhere)
    (root / "Graz-again").symlink_to(elsewhere)  # a second link to one directory
    (root / "Wien-link").symlink_to(root / "Wien")  # a link to a subfolder of the root
    (root / "Wien-part").symlink_to(root / "Wien")  # sorted after Wien-link: reported too
    setup.write_config(backup__roots=[str(root)], backup__follow_root_symlinks=True)

    result = setup.run()

    assert result.returncode == 1, result.stderr
    assert _folders(setup) == [str(root / "Graz"), str(root / "Wien")]
    graz = setup.bucket(root / "Graz")
    assert set(latest_versions(s3, graz)) == {
        _key(root / "Graz/g.tif"),
        _key(root / "Graz/sub/h.tif"),
    }
    problems = dict(_problems(setup))
    assert set(problems) == {
        str(root / "Graz-again"),
        str(root / "Wien-link"),
        str(root / "Wien-part"),
    }
    assert (
        f"is the directory {elsewhere}, which backup folder {root / 'Graz'}"
        in (problems[str(root / "Graz-again")])
    )
    assert "not backed up twice" in problems[str(root / "Wien-link")]
    assert set(latest_versions(s3, setup.bucket(root / "Wien"))) == {_key(root / "Wien/a.tif")}

    setup.write_config(backup__exclude=["*-again", "*-link", "*-part"])
    again = setup.run()
    assert again.returncode == 0, again.stderr
    assert "uploaded 0/0" in again.stdout


def test_a_symlink_in_backup_folders_is_backed_up_under_its_own_path_once(
    setup: Setup, s3: Any
) -> None:
    real = setup.images / "Band"
    setup.file("Band/a.tif", b"a")
    link = setup.images / "Band-link"
    link.symlink_to(real)
    setup.write_config(backup__folders=[str(link)])

    assert setup.run().returncode == 0
    assert set(latest_versions(s3, setup.bucket(link))) == {_key(link / "a.tif")}

    # The same directory named twice, once through the link: backed up once.
    setup.write_config(backup__folders=[str(real), str(link)])
    result = setup.run()

    assert result.returncode == 1, result.stderr
    problems = _problems(setup)
    assert [path for path, _message in problems] == [str(link), None]
    assert f"backup.folders[1]: is the directory {real}" in problems[0][1]
    # Backed up before through the link, it is now a folder config.json no longer produces.
    assert problems[1][1].startswith("no longer a backup folder of config.json;")
    assert os.path.realpath(link) == str(real)
