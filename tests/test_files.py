"""The one writer of files (atomic, covered by the fault hook, never replacing a result silently) and
the readers that fail on one line: on their own, and as the only way vaegen writes and reads files."""

import errno
import json
import os
import pathlib
import re
import zipfile

import numpy as np
import pytest

from vaegen import errors, files
from vaegen.train import faults

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vaegen"


def _leftovers(directory):
    return [p.name for p in pathlib.Path(directory).iterdir() if ".tmp" in p.name]


# --- the writer -----------------------------------------------------------------------------------

def test_every_kind_of_content_is_written_whole_fsynced_and_renamed(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or fsync(fd))
    path = tmp_path / "new" / "dir" / "out.json"
    assert files.write_atomic(path, "text\n", kind="eval") is None
    assert path.read_text() == "text\n"
    files.write_atomic(path, b"\x00bytes", kind="eval")
    assert path.read_bytes() == b"\x00bytes"
    files.write_npz(tmp_path / "a.npz", {"x": np.arange(3)}, kind="eval")
    files.write_json(tmp_path / "b.json", {"k": 1}, kind="eval")
    assert json.loads((tmp_path / "b.json").read_text()) == {"k": 1}
    np.testing.assert_array_equal(files.load_npz(tmp_path / "a.npz", what="x", fix="-")["x"], np.arange(3))
    assert len(synced) >= 8  # each file, and its directory after the rename
    assert not _leftovers(tmp_path) and not _leftovers(path.parent)


@pytest.mark.parametrize("where", ["hook", "midway"])
def test_a_full_disk_keeps_the_previous_file_names_the_path_and_a_rerun_recovers(where, tmp_path, monkeypatch):
    path = tmp_path / "mixture.json"
    path.write_text('{"earlier": true}\n')

    def half_then_full(f):
        f.write(b'{"tru')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    if where == "hook":
        with faults.disk_full("eval"), pytest.raises(errors.DiskFullError) as info:
            files.write_json(path, {"new": True}, kind="eval", kept_note="(the fit was not saved)")
    else:
        with pytest.raises(errors.DiskFullError) as info:
            files.write_atomic(path, half_then_full, kind="eval", kept_note="(the fit was not saved)")
    assert str(info.value) == (f"no space left on device writing {path}; the previous file is kept (the fit was not "
                               "saved); free space on that device and run the same command again")
    assert path.read_text() == '{"earlier": true}\n' and not _leftovers(tmp_path)
    with faults.disk_full("eval"), pytest.raises(OSError) as raw:  # for a caller with a message of its own
        files.write_json(tmp_path / "other.json", {}, kind="eval", report_disk_full=False)
    assert raw.value.errno == errno.ENOSPC and not (tmp_path / "other.json").exists()
    files.write_json(path, {"new": True}, kind="eval")  # space freed: the same write goes through
    assert json.loads(path.read_text()) == {"new": True} and not _leftovers(tmp_path)


def test_the_fault_hook_of_the_trainer_is_the_writers():
    assert faults.disk_full is files.disk_full and faults.before_write is files.before_write
    assert faults.DISK_FULL_ENV == files.DISK_FULL_ENV


@pytest.mark.parametrize("links", [True, False])
def test_a_result_is_never_replaced_silently(links, tmp_path, monkeypatch):
    if not links:  # a filesystem without hard links: the previous file is copied
        def no_links(*a, **kw):
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "eval.json"
    assert files.write_atomic(path, "first\n", kind="eval", keep_previous=True) is None
    assert files.write_atomic(path, "first\n", kind="eval", keep_previous=True) is None   # the same: nothing to keep
    assert files.write_atomic(path, "second\n", kind="eval", keep_previous=True) == tmp_path / "eval.1.json"
    assert files.write_atomic(path, "third\n", kind="eval", keep_previous=True) == tmp_path / "eval.2.json"
    assert [(tmp_path / n).read_text() for n in ("eval.json", "eval.1.json", "eval.2.json")] == [
        "third\n", "first\n", "second\n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.1.json", "eval.2.json", "eval.json"]
    with faults.disk_full("eval"), pytest.raises(errors.DiskFullError):  # a failed write keeps nothing new
        files.write_atomic(path, "fourth\n", kind="eval", keep_previous=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.1.json", "eval.2.json", "eval.json"]


# --- the readers ----------------------------------------------------------------------------------

FIX = "fit it again: vaegen expost --workdir W"


def _json_cases(tmp_path):
    good = json.dumps({"weights": [0.5, 0.5]})
    (tmp_path / "dir.json").mkdir()
    cases = {"truncated.json": (good[:9], "invalid JSON, truncated or damaged"), "empty.json": ("", "(empty)"),
             "list.json": ("[1, 2]", "a JSON list, not a dict"), "binary.json": (b"\xff\xfe\x00", "not text"),
             "dir.json": (None, "(a directory)"), "missing.json": (None, "does not exist")}
    for name, (content, _) in cases.items():
        if isinstance(content, str):
            (tmp_path / name).write_text(content)
        elif isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
    return {name: fragment for name, (_, fragment) in cases.items()}


def test_a_damaged_json_file_is_one_line_naming_it_and_what_to_do(tmp_path):
    for name, fragment in _json_cases(tmp_path).items():
        with pytest.raises(errors.DamagedFileError) as info:
            files.read_json(tmp_path / name, what="ex-post mixture record", fix=FIX)
        msg = str(info.value)
        assert msg.startswith(str(tmp_path / name)) and fragment in msg and msg.endswith(FIX) and "\n" not in msg, msg


def test_a_damaged_npz_or_npy_file_is_one_line_naming_it_and_what_to_do(tmp_path):
    np.savez(tmp_path / "good.npz", weights=np.ones(2), means=np.zeros((2, 3)))
    np.save(tmp_path / "good.npy", np.arange(64, dtype=np.uint8))
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "good.npy").read_bytes()[:100])
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    cases = [
        (files.load_npz, "truncated.npz", "truncated or damaged"),
        (files.load_npz, "empty.npz", "is not a readable"),
        (files.load_npz, "good.npy", "an .npy array, not an .npz archive"),
        (lambda p, **kw: files.load_npz(p, names=("weights", "scale_tril"), **kw), "good.npz",
         "it holds arrays means, weights, not scale_tril"),
        (files.load_npy, "truncated.npy", "is not a readable"),
        (files.load_npy, "good.npz", "an .npz archive, not an .npy array"),
        (files.load_npy, "objects.npy", "is not a readable"),   # a pickle is never loaded
        (files.load_npy, "missing.npy", "does not exist"),
    ]
    for read, name, fragment in cases:
        with pytest.raises(errors.DamagedFileError) as info:
            read(tmp_path / name, what="ex-post mixture", fix=FIX)
        msg = str(info.value)
        assert msg.startswith(str(tmp_path / name)) and fragment in msg and msg.endswith(FIX) and "\n" not in msg, msg
    with pytest.raises(errors.ImagesError, match=r"^--images .*truncated.npz is not a readable"):  # the caller's class
        files.load_npz(tmp_path / "truncated.npz", what="images", fix="save them again", error=errors.ImagesError,
                       name=f"--images {tmp_path / 'truncated.npz'}")
    assert issubclass(errors.DamagedFileError, errors.USER_ERRORS)


# --- the only way vaegen writes and reads files -----------------------------------------------------

WRITES = re.compile(r"\.write_text\(|\.write_bytes\(|np\.savez|savefig\(|[^.\w]open\([^)]*[\"'](?:w|a|wb|ab|x)[\"']"
                    r"|os\.replace\(|json\.dump\(|\.tofile\(|shutil\.(?:copy|move)")
READS = re.compile(r"json\.loads?\(|np\.load\(|\.read_text\(|\.read_bytes\(")

# Writes that are not results: the append-only metrics log (the fault hook is called first; a torn
# line is dropped on resume), the CIFAR-10 archive extracted into a scratch directory, and the
# figure the one writer saves through a file object.
WRITES_ALLOWED = {
    "vaegen/train/workdir.py": 1,          # append_jsonl: metrics.jsonl, append-only
    "vaegen/data/datasets.py": 1,          # _extract_cifar10, into a temporary directory
    "vaegen/studies/figures.py": 1,        # fig.savefig(f) inside files.write_atomic
    "vaegen/runs/recipes/store.py": 1,     # keep_aside: a fit made with other settings renamed aside, nothing written
    "vaegen/studies/compare_report.py": 1,  # fig.savefig(f) inside files.write_atomic
}
# Writers still to be switched to vaegen.files: none.
WRITES_PENDING: dict[str, int] = {}
# Reads that handle their own failures in one line (checked elsewhere): config.json and run.json
# (read_stored, read_run_json: WorkdirError), the lock record, /proc, metrics.jsonl (torn lines
# dropped), the dataset cache (rebuilt if damaged), a user's IDX/CIFAR files (SourceFormatError),
# the classifier's parameters (DamagedFileError), config.json text given to from_json.
READS_ALLOWED = {
    "vaegen/train/workdir.py": 11, "vaegen/data/datasets.py": 5, "vaegen/studies/metrics.py": 2,
    "vaegen/config/loading.py": 1,
    # a compressed file's bytes and the header inside them (damage: CompressedFileError, one line)
    "vaegen/cli/coding.py": 1, "vaegen/runs/compression.py": 1,
}
READS_PENDING: dict[str, int] = {}


def _count(pattern):
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel == "vaegen/files.py":
            continue
        code = [l.split("#")[0] for l in path.read_text().splitlines() if not l.strip().startswith(("#", '"', "'"))]
        n = sum(len(pattern.findall(l)) for l in code)
        if n:
            found[rel] = n
    return found


@pytest.mark.parametrize("pattern, allowed, pending", [(WRITES, WRITES_ALLOWED, WRITES_PENDING),
                                                       (READS, READS_ALLOWED, READS_PENDING)], ids=["writes", "reads"])
def test_every_file_is_written_and_read_through_vaegen_files(pattern, allowed, pending):
    """A new direct write or read fails here: use vaegen.files.  A pending site that switched to it
    fails here too: remove it from the pending list."""
    found = _count(pattern)
    expected = {**allowed, **pending}
    extra = {k: v for k, v in found.items() if v > expected.get(k, 0)}
    assert not extra, f"direct file access outside vaegen.files (use write_atomic / read_json / load_npz): {extra}"
    done = {k: (found.get(k, 0), v) for k, v in expected.items() if found.get(k, 0) < v}
    assert not done, f"fewer direct accesses than listed (switched to vaegen.files? update the lists): {done}"
