"""Which code made a run: the version every run records, and the warnings it feeds."""

from __future__ import annotations

import math
import subprocess

import pytest

from fedbench import __version__
from fedbench.tracking import provenance

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def _git(root, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          cwd=root, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A git checkout laid out like fedbench's: code folders and a docs folder, one commit."""
    root = tmp_path / "fedbench-src"
    (root / "fedbench").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "fedbench" / "engine.py").write_text("ROUNDS = 1\n")
    (root / "docs" / "guide.md").write_text("# guide\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'fedbench'\n")
    (root / ".gitignore").write_text("__pycache__/\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "one")
    return root


def test_a_clean_checkout_is_its_commit(checkout, tmp_path):
    assert provenance.checkout_version(checkout) == _git(checkout, "rev-parse", "HEAD")
    assert provenance.commit(checkout) == _git(checkout, "rev-parse", "HEAD")
    assert provenance.commit(checkout / "fedbench") == "unknown"  # inside it, not its top


def test_a_changed_or_new_code_file_marks_the_commit_uncommitted_with_a_digest_of_the_changes(checkout):
    commit = _git(checkout, "rev-parse", "HEAD")
    (checkout / "fedbench" / "engine.py").write_text("ROUNDS = 2\n")
    changed = provenance.checkout_version.__wrapped__(checkout)
    assert changed.startswith(commit + provenance.UNCOMMITTED + ".")
    (checkout / "fedbench" / "engine.py").write_text("ROUNDS = 3\n")
    assert provenance.checkout_version.__wrapped__(checkout) not in (changed, commit)  # another state
    _git(checkout, "checkout", "--", "fedbench/engine.py")
    (checkout / "fedbench" / "new_method.py").write_text("X = 1\n")  # not added yet, still imported
    assert provenance.checkout_version.__wrapped__(checkout).startswith(commit + provenance.UNCOMMITTED + ".")


def test_docs_and_ignored_files_do_not_change_the_version(checkout):
    commit = _git(checkout, "rev-parse", "HEAD")
    (checkout / "docs" / "guide.md").write_text("# a better guide\n")
    (checkout / "fedbench" / "__pycache__").mkdir()
    (checkout / "fedbench" / "__pycache__" / "engine.pyc").write_bytes(b"\0")
    (checkout / "results.db").write_text("")
    assert provenance.checkout_version.__wrapped__(checkout) == commit


def test_outside_its_own_checkout_the_version_is_the_package_version_and_a_digest_of_the_code(checkout, tmp_path):
    """An installed package inside some other repository is not that repository's commit."""
    expected = f"fedbench {__version__}+code.{provenance.code_digest(provenance.package_folders())[:12]}"
    assert provenance.checkout_version.__wrapped__(checkout / "fedbench") == expected
    plain = tmp_path / "no-git"
    plain.mkdir()
    assert provenance.checkout_version.__wrapped__(plain) == expected


def _layout(root, files, packages_inside):
    """Code files laid out as a checkout (methods/ beside fedbench/) or a wheel (inside it)."""
    for name, text in files.items():
        package, _, rest = name.partition("/")
        folder = root / "fedbench" / package if packages_inside and package != "fedbench" else root / package
        (folder / rest).parent.mkdir(parents=True, exist_ok=True)
        (folder / rest).write_text(text)
    (root / "fedbench" / "__pycache__").mkdir(exist_ok=True)
    (root / "fedbench" / "__pycache__" / "engine.cpython-311.pyc").write_bytes(b"\0\1")
    inside = root / "fedbench"
    return {"fedbench": [root / "fedbench"], "fedbench.methods": [inside / "methods" if packages_inside
                                                                 else root / "methods"]}


def test_the_code_digest_is_the_same_for_a_checkout_and_a_wheel_of_the_same_code_and_sees_every_change(tmp_path):
    files = {"fedbench/engine.py": "ROUNDS = 1\n", "methods/fedavg.py": "class FedAvg: ...\n"}
    checkout = provenance.code_digest(_layout(tmp_path / "checkout", files, packages_inside=False))
    wheel = provenance.code_digest(_layout(tmp_path / "wheel", files, packages_inside=True))
    assert checkout == wheel
    changed = provenance.code_digest(_layout(tmp_path / "changed", {**files, "methods/fedavg.py": "class FedAvg: pass\n"},
                                             packages_inside=True))
    added = provenance.code_digest(_layout(tmp_path / "added", {**files, "methods/new.py": ""}, packages_inside=True))
    assert len({checkout, changed, added}) == 3


def test_this_checkout_records_a_version_and_the_environment_can_name_a_copied_tree(monkeypatch):
    version = provenance.checkout_version(provenance.SOURCE_ROOT)
    assert version and version != "unknown"
    monkeypatch.setenv(provenance.ENV, "4d8f2ff (copied tree)")
    assert provenance.code_version() == "4d8f2ff (copied tree)"
    monkeypatch.delenv(provenance.ENV)
    assert provenance.code_version() == version


def test_a_run_records_its_version_and_older_runs_their_commit():
    assert provenance.recorded_version({provenance.TAG: COMMIT_A, provenance.COMMIT_TAG: COMMIT_B}) == COMMIT_A
    assert provenance.recorded_version({provenance.COMMIT_TAG: COMMIT_B}) == COMMIT_B
    assert provenance.recorded_version({provenance.COMMIT_TAG: "unknown"}) is None
    assert provenance.recorded_version({}) is None


def test_a_run_resumed_by_other_code_records_both_versions_once():
    assert provenance.resumed_version(COMMIT_A, COMMIT_A) == COMMIT_A
    assert provenance.resumed_version(None, COMMIT_B) == COMMIT_B
    both = provenance.resumed_version(COMMIT_A, COMMIT_B)
    assert both == f"{COMMIT_A} then {COMMIT_B}"
    assert provenance.resumed_version(both, COMMIT_B) == both  # resumed twice by the same code


def test_short_cuts_commits_only():
    assert provenance.short(COMMIT_A + provenance.UNCOMMITTED) == "a" * 12 + provenance.UNCOMMITTED
    assert provenance.short("fedbench 0.1.0") == "fedbench 0.1.0"
    assert provenance.short(f"{COMMIT_A} then {COMMIT_B}") == f"{'a' * 12} then {'b' * 12}"


def test_runs_of_several_versions_or_uncommitted_code_are_named_in_warnings():
    assert provenance.describe_versions([COMMIT_A, COMMIT_A], "the 2 runs") == []
    mixed = provenance.describe_versions([COMMIT_A, COMMIT_A, COMMIT_B + provenance.UNCOMMITTED, None, math.nan],
                                         "the 5 runs")
    assert len(mixed) == 2
    assert mixed[0].startswith(f"the 5 runs come from 3 code versions: {'a' * 12} (2), ")
    assert "unrecorded (2)" in mixed[0] and "--rerun" in mixed[0]
    assert mixed[1].startswith("1 of the 5 runs were made from a checkout with uncommitted code changes")
