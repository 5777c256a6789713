"""Bad input at volume: property-based corruption of every loader's raw tables (Hypothesis).

Each example takes a small valid synthetic release (MIMIC-IV, MIMIC-III, OpenI in both layouts, a
manifest), corrupts one table in one way (a truncated row, a field of the wrong type or an absurd
time, a duplicated row, a missing column, an extra field, bytes that are not UTF-8, an upper- or
lower-cased header) and runs the loader. Every run must end in one of two ways:

- a cohort whose counts account for every input row (raw stays or studies = samples + exclusions,
  the samples counted = the rows written), or
- one `MedmixError` naming the corrupted file (and, where one row is at fault, its row or line).

Never another exception (a traceback), never a silent drop. The examples are derandomised (the same
cases in every run); `FUZZ_EXAMPLES` sets how many per loader (README, "Reliability").
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmix.io import MedmixError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

VALUES = ["", "abc", "NaN", "nan", "inf", "-1", "0", "1e309", "99999999999999999999", "3.5", "1800-01-01 00:00:00",
          "2300-12-31 23:59:59", "2150-02-30 25:61:00", "not a date", "NULL", "\\N", " ", "\u00e9\u00e8", "1,2"]

# one corruption: (operation, which row, which column, a value); rows and columns are taken modulo the table's size
CORRUPTION = st.tuples(
    st.sampled_from(["truncate_row", "set_field", "duplicate_row", "drop_column", "extra_field", "bad_bytes",
                     "upper_header", "lower_header", "empty_table"]),
    st.integers(0, 10_000), st.integers(0, 10_000), st.sampled_from(VALUES))


# ------------------------------------------------------------------ table I/O

def _read(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def _rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def corrupt(path: Path, op: str, i: int, j: int, value: str) -> str:
    """Apply one corruption to the CSV table at `path` in place; returns a description."""
    rows = _rows(_read(path))
    header, body = rows[0], rows[1:]
    r = 1 + i % max(len(body), 1)        # a data line (1-based into rows)
    c = j % len(header)
    if op == "empty_table":
        _write(path, b"")
        return "empty file"
    if op in ("upper_header", "lower_header"):
        rows[0] = [h.upper() if op == "upper_header" else h.lower() for h in header]
        _write(path, _csv(rows))
        return op
    if op == "drop_column":
        _write(path, _csv([row[:c] + row[c + 1:] for row in rows]))
        return f"column {header[c]} dropped"
    if not body:
        return "no data row"
    if op == "set_field":
        rows[r] = [*rows[r]]
        rows[r][c] = value
        _write(path, _csv(rows))
        return f"row {r} field {header[c]} = {value!r}"
    if op == "duplicate_row":
        rows.insert(r, list(rows[r]))
        _write(path, _csv(rows))
        return f"row {r} duplicated"
    if op == "extra_field":
        rows[r] = [*rows[r], value or "x"]
        _write(path, _csv(rows))
        return f"row {r} extra field"
    lines = _csv(rows).split(b"\n")
    if op == "truncate_row":
        lines[r] = lines[r][: max(1, (j % max(len(lines[r]), 1)))]
        _write(path, b"\n".join(lines))
        return f"line {r + 1} truncated"
    if op == "bad_bytes":
        lines[r] = lines[r] + b"\xff\xfe\xc3("
        _write(path, b"\n".join(lines))
        return f"line {r + 1} not UTF-8"
    raise AssertionError(op)


def _tables(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith((".csv", ".csv.gz")))


def _prepare(kind: str, root: Path, **spec) -> tuple:
    """What `medmix prepare` does: the kind's loader with its schema defaults, then the cohort's finalisation."""
    from medmix import config
    from medmix.data import cohort as C
    from medmix.data.loaders import build
    mod = {"mimic4": "ehr", "mimic3": "ehr", "openi": "findings", "manifest": "note"}[kind]
    cfg = config.validate({"targets": [], "encoders": {"t": {"kind": "ehr_tabular"}},
                           "datasets": {"x": {"kind": kind, "root": str(root), **spec,
                                              **({"source": "x"} if kind == "mimic3" else {}),
                                              "modalities": {mod: {"experts": ["t"]}}}}})
    job = config.prepare_job(cfg, "x")
    return C.finalize(*build(kind, job, root, sorted(job.get("optional_tables") or []), root.parent))


def _check(run, root: Path, table: Path, what: str) -> str:
    """Run the loader; either a consistent cohort or one MedmixError naming the corrupted table."""
    try:
        co, rep = run()
    except MedmixError as e:
        msg = str(e)
        assert table.name.split(".")[0].lower() in msg.lower(), (what, table, msg)
        return "error"
    counts = rep["counts"]
    assert co.height == counts["samples"], (what, table)
    raw = counts.get("icu_stays_raw", counts.get("manifest_rows", counts.get("studies_raw")))
    if raw is not None:
        assert raw == counts["samples"] + sum(rep.get("exclusions", {}).values()), (what, table, counts, rep.get("exclusions"))
    return "cohort"


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    from medmix.synth import synth_mimic4
    from medmix.synth_layouts import synth_mimic3, synth_openi
    base = tmp_path_factory.mktemp("releases")
    synth_mimic4(base / "mimic4", n=24, seed=5, image_size=32)
    synth_mimic3(base / "mimic3", n=24, seed=5)
    synth_openi(base / "openi", n=16, seed=5, layout="csv")
    return base


def _copy(src: Path, tmp: Path) -> Path:
    dest = tmp / src.name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True)
    return dest


_SEEN: dict[str, dict[str, int]] = {}


def _record(loader: str, outcome: str) -> None:
    _SEEN.setdefault(loader, {}).setdefault(outcome, 0)
    _SEEN[loader][outcome] += 1


@FUZZ
@given(data=st.data(), corruption=CORRUPTION)
def test_mimic4_loader_under_corruption(releases, tmp_path, data, corruption):
    root = _copy(releases / "mimic4", tmp_path)
    table = data.draw(st.sampled_from(_tables(root)), label="table")
    what = corrupt(table, *corruption)
    _record("mimic4", _check(lambda: _prepare("mimic4", root), root, table, what))


@FUZZ
@given(data=st.data(), corruption=CORRUPTION)
def test_mimic3_loader_under_corruption(releases, tmp_path, data, corruption):
    root = _copy(releases / "mimic3", tmp_path)
    table = data.draw(st.sampled_from(_tables(root)), label="table")
    what = corrupt(table, *corruption)
    _record("mimic3", _check(lambda: _prepare("mimic3", root), root, table, what))


@FUZZ
@given(data=st.data(), corruption=CORRUPTION)
def test_openi_loader_under_corruption(releases, tmp_path, data, corruption):
    root = _copy(releases / "openi", tmp_path)
    table = data.draw(st.sampled_from(_tables(root)), label="table")
    what = corrupt(table, *corruption)
    _record("openi", _check(lambda: _prepare("openi", root), root, table, what))


@FUZZ
@given(corruption=CORRUPTION)
def test_manifest_loader_under_corruption(tmp_path, corruption):
    root = tmp_path / "m"
    root.mkdir(exist_ok=True)
    rows = [["sample_id", "patient_id", "split", "y", "note", "vars"]]
    for k in range(12):
        rows.append([f"s{k}", f"p{k // 2}", ("train", "val", "test")[(k // 2) % 3], str(k % 2),
                     f"note {k}, with a comma", '{"age": %d, "sex": "F"}' % (40 + k)])
    path = root / "manifest.csv"
    path.write_bytes(_csv(rows))
    what = corrupt(path, *corruption)
    run = lambda: _prepare("manifest", root, manifest=str(path), task="y", tasks={"y": {"type": "binary", "columns": ["y"]}},  # noqa: E731
                           inputs={"note": "text", "vars": "json"})
    _record("manifest", _check(run, root, path, what))


def test_zz_fuzz_report():
    """Print how many corrupted cases each loader ran and how they ended (README, Reliability)."""
    print("fuzz cases per loader:", {k: dict(sorted(v.items())) for k, v in sorted(_SEEN.items())})
    assert all(sum(v.values()) >= 1 for v in _SEEN.values()), _SEEN
