"""Helpers every loader shares: required vs optional sources, counted steps, row-level errors."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
from pathlib import Path

import polars as pl

from medmix.data.variables import BOUNDS
from medmix.io import MedmixError

log = logging.getLogger("medmix.prepare")
_CHUNK_BYTES = 64 << 20  # event tables are streamed in blocks of this size


def find_table(folder: Path, name: str) -> Path:
    """The file of table `name` in `folder` as a release ships it: `.csv.gz` or `.csv`, the name as
    given, in upper or in lower case (`PATIENTS.csv`, `patients.csv.gz`). Not found: the canonical `name.csv.gz` (so the
    error names what was looked for)."""
    folder = Path(folder)
    for n in dict.fromkeys((name, name.lower(), name.upper())):
        for suffix in (".csv.gz", ".csv"):
            if (folder / f"{n}{suffix}").exists():
                return folder / f"{n}{suffix}"
    return folder / f"{name}.csv.gz"


def _header(path: Path) -> list[str]:
    opener = gzip.open if Path(path).suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            line = f.readline()
    except (OSError, EOFError) as e:
        raise MedmixError(f"{path}: not a readable CSV: {e}") from None
    return [c.strip().strip('"') for c in line.decode("utf-8", "replace").rstrip("\r\n").split(",")]


def match_columns(path: Path, header: list[str], columns: list[str], optional: tuple[str, ...] = ()) -> dict[str, str]:
    """Requested column -> the header's spelling, matched case-insensitively (releases differ: the
    full MIMIC-III has upper-case headers, its public demo lower-case). A requested column that
    is not there is an error naming the file and the column; an `optional` one is left out."""
    by_lower = {c.lower(): c for c in header}
    found = {c: by_lower[c.lower()] for c in list(columns) + list(optional) if c.lower() in by_lower}
    missing = [c for c in columns if c not in found]
    if missing:
        raise MedmixError(f"{path}: missing column(s) {missing} in the header (it has: {', '.join(header[:30])})")
    return found


def _ragged_line(path: Path) -> str:
    """Where a CSV first has a row with more or fewer fields than its header (' (row R, line L: ...)'), or ''."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as f:
            rows = csv.reader(f)
            width = len(next(rows, []))
            for i, row in enumerate(rows):
                if len(row) != width:
                    return f" (row {i + 1}, line {rows.line_num}: {len(row)} fields, the header has {width})"
    except (OSError, csv.Error):
        pass
    return ""


def read_table(path: Path, columns: list[str] | None = None, report: dict | None = None,
               optional: tuple[str, ...] = ()) -> pl.DataFrame:
    """A CSV table as strings, its columns named as requested whatever their case in the file
    (`optional` ones only if present). Bytes that are not UTF-8 are decoded with U+FFFD replacement
    and the cells so decoded counted (cohort.json counts/non_utf8_cells, and a warning), never a
    crash; a missing column or an unreadable file is an error naming the file."""
    names = None
    if columns is not None:
        names = match_columns(path, _header(path), columns, optional)
    cols = list(names.values()) if names is not None else None
    try:
        df = pl.read_csv(path, columns=cols, infer_schema_length=0)
    except pl.exceptions.ColumnNotFoundError as e:
        raise MedmixError(f"{path}: missing column: {e}") from None
    except pl.exceptions.NoDataError as e:
        raise MedmixError(f"{path}: not a readable CSV: {e}") from None
    except pl.exceptions.ComputeError as e:
        if "utf-8" not in str(e).lower():
            raise MedmixError(f"{path}: not a readable CSV{_ragged_line(path)}: {str(e).splitlines()[0]}") from None
        try:
            df = pl.read_csv(path, columns=cols, infer_schema_length=0, encoding="utf8-lossy")
        except pl.exceptions.ComputeError as e2:   # malformed as well (e.g. bytes after a closing quote)
            raise MedmixError(f"{path}: not a readable CSV{_ragged_line(path)}: {str(e2).splitlines()[0][:200]}") from None
        n = int(df.select(pl.sum_horizontal([pl.col(c).str.contains("\ufffd", literal=True).fill_null(False).sum()
                                              for c in df.columns])).item())
        msg = f"{path}: {n} cell(s) held bytes that are not UTF-8; decoded with replacement characters"
        log.warning(msg)
        if report is not None:
            report["counts"].setdefault("non_utf8_cells", {})[Path(path).name] = n
            report.setdefault("warnings", []).append(msg)
    if names is not None:
        df = df.rename({actual: want for want, actual in names.items() if actual != want})
    return df


def typed(df: pl.DataFrame, path: Path, casts: dict[str, pl.DataType], required: tuple[str, ...] = (),
          unique: tuple[str, ...] = ()) -> pl.DataFrame:
    """Cast a table's string columns (as read) to their types. A value that is not of its type, an
    empty cell in a `required` column, or a value repeated in a `unique` column is an error naming
    the file, its row and line and the field; other empty cells stay null."""
    def fail(i: int, col: str, why: str):
        raise MedmixError(f"{path}: row {i + 1} (line {i + 2}): field '{col}' {why}")

    for col, dtype in casts.items():
        got = pl.col(col).str.strip_chars().cast(dtype, strict=False)
        empty = pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")
        bad = df.select((got.is_null() & ~empty).arg_true()).to_series()
        if bad.len():
            what = {pl.Int64: "an integer", pl.Int8: "an integer", pl.Float64: "a number"}.get(dtype, str(dtype))
            fail(int(bad[0]), col, f"is {df[col][int(bad[0])]!r}, expected {what}")
        if col in required:
            none = df.select(empty.arg_true()).to_series()
            if none.len():
                fail(int(none[0]), col, "is empty")
    df = df.with_columns([pl.col(c).str.strip_chars().cast(t, strict=False) for c, t in casts.items()])
    for col in unique:
        dup = df.select((~pl.col(col).is_first_distinct() & pl.col(col).is_not_null()).arg_true()).to_series()
        if dup.len():
            i = int(dup[0])
            first = int(df.select((pl.col(col) == df[col][i]).arg_true()).to_series()[0])
            fail(i, col, f"duplicates '{df[col][i]}' (first at row {first + 1}, line {first + 2})")
    return df


def available_before(df: pl.DataFrame, start: pl.Expr, report: dict, source_name: str, when: str = "t",
                     stored: str = "storetime", when_name: str = "charttime") -> pl.DataFrame:
    """Rows of a time-stamped source inside [start, pred_time) *by the time the record existed*:
    its `stored` time (a note signed, a result stored) where the row has one, else its `when`
    (the exam, specimen or chart time). cohort.json `cuts/<source_name>` records the cut column
    and counts the rows charted before the prediction time but stored after it (removed), and
    the rows that had no stored time (cut on `when`). `df` holds `pred_time`; `when` and `stored`
    are datetimes; `when_name` is what `when` holds, as cohort.json names it."""
    has = stored in df.columns
    avail = pl.coalesce(pl.col(stored), pl.col(when)) if has else pl.col(when)
    inside = (pl.col(when) >= start) & (pl.col(when) < pl.col("pred_time"))
    late = int(df.select((inside & (avail >= pl.col("pred_time"))).sum()).item() or 0)
    no_store = int(df.select((inside & pl.col(stored).is_null()).sum()).item() or 0) if has else \
        int(df.select(inside.sum()).item() or 0)
    cut = {"cut_on": f"{stored} (else {when_name})" if has else when_name,
           "charted_before_but_stored_after_prediction_time": late,
           f"rows_without_{stored}_cut_on_{when_name.split()[0]}": no_store}
    cuts = report.setdefault("cuts", {})
    if source_name in cuts and cuts[source_name]["cut_on"] == cut["cut_on"]:   # one more chunk of the source
        for k in list(cut)[1:]:
            cuts[source_name][k] += cut[k]
    else:
        cuts[source_name] = cut
    if late:
        log.info("%s: %d row(s) charted before the prediction time but stored after it: left out", source_name, late)
    # charted inside the window AND existing before the prediction time (a storetime earlier than the
    # charttime never lets a record charted later in)
    return df.filter(inside & (avail < pl.col("pred_time")))


def new_report(tasks: dict | None = None) -> dict:
    """The cohort.json skeleton every loader fills: counts, exclusions, missing inputs by reason."""
    rep: dict = {"exclusions": {}, "missing": {}, "counts": {}, "warnings": []}
    if tasks is not None:
        rep["tasks"] = tasks
    return rep


def source(path: Path, table: str, what: str, optional: set[str] | frozenset, report: dict,
           hint: str = "set the dataset's root in the config") -> Path | None:
    """`path` if it exists; None (with a logged, reported warning) if `table` is declared optional;
    otherwise an error naming the file and how to make it optional."""
    path = Path(path)
    if path.exists():
        return path
    if table in optional:
        msg = f"{path}: {what} not found; table '{table}' is optional, so the modality it feeds is missing"
        log.warning(msg)
        report.setdefault("warnings", []).append(msg)
        return None
    raise MedmixError(f"{path}: {what} not found ({hint}, or declare '{table}' in optional_tables "
                      f"/ --optional-tables to treat its modality as missing)")


def count(report: dict, section: str, key: str, n: int) -> None:
    """Record one step's count in cohort.json and the log (nothing dropped silently)."""
    report.setdefault(section, {})[key] = int(n)
    log.info("%s: %s = %d", section, key, n)


def slug(term: str) -> str:
    """A label term as a column-name fragment: 'Catheters, Indwelling' -> 'catheters_indwelling'."""
    s = re.sub(r"[^a-z0-9]+", "_", term.lower()).strip("_")
    return s or "term"


def where(r) -> str:
    """A CSV data row (1-based) with its line in the file (the header is line 1); other locators as given."""
    return f"row {r} (line {r + 1})" if isinstance(r, int) else str(r)


def check_unique(values: list, source_name: str, field: str, rows: list | None = None) -> None:
    """A duplicate id is an error naming the file, the row and the field (rows default to CSV data rows)."""
    rows = rows if rows is not None else list(range(1, len(values) + 1))
    seen: dict = {}
    for i, v in enumerate(values):
        if v in seen:
            raise MedmixError(f"{source_name}: {where(rows[i])}: field '{field}' duplicates '{v}' "
                              f"(first at {where(rows[seen[v]])})")
        seen[v] = i


def _lossy_chunk(path: Path, data: bytes, cols: list[str], report: dict | None) -> pl.DataFrame:
    """A chunk that is not valid UTF-8, decoded with replacement characters and counted as read_table does."""
    df = pl.read_csv(io.BytesIO(data), columns=cols, infer_schema_length=0, encoding="utf8-lossy")
    n = int(df.select(pl.sum_horizontal([pl.col(c).str.contains("\ufffd", literal=True).fill_null(False).sum()
                                          for c in df.columns])).item())
    msg = f"{path}: {n} cell(s) held bytes that are not UTF-8; decoded with replacement characters"
    log.warning(msg)
    if report is not None:
        cells = report["counts"].setdefault("non_utf8_cells", {})
        cells[Path(path).name] = cells.get(Path(path).name, 0) + n
        report.setdefault("warnings", []).append(msg)
    return df


def read_events(path: Path, columns: list[str], itemids: set[int], key: str, keys: set[int],
                optional: tuple[str, ...] = (), per_chunk=None, report: dict | None = None) -> pl.DataFrame:
    """Stream a large event table (labevents/chartevents: no multi-line fields) in chunks,
    keeping the wanted items of the wanted subjects/stays only: memory stays bounded on the
    full 300M-row MIMIC-IV chartevents. Columns are matched case-insensitively and come back
    lower-case; an `optional` column (e.g. `storetime`) is read where the file has it.

    `per_chunk(df) -> df`, if given, is applied to each chunk's kept rows before they are kept
    (the loaders cut each chunk to its time window there, so only the rows inside a window stay
    in memory, not every row of a wanted stay); with no rows at all it is applied once to the
    empty table, so what it records (cohort.json cuts) is always there. As in `read_table`,
    bytes that are not UTF-8 are decoded with replacement characters and counted (`report`), and
    an `itemid` that is not an integer is an error naming the file, row and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    parts = []
    with opener(path, "rb") as f:
        header = f.readline()
        names = match_columns(path, [c.strip().strip('"') for c in header.decode("utf-8", "replace").strip().split(",")],
                              columns, optional)
        cols = list(names.values())
        lower = {actual: want.lower() for want, actual in names.items()}
        key = key.lower()
        rest, row0 = b"", 0
        while True:
            block = f.read(_CHUNK_BYTES)
            if not block and not rest:
                break
            data = rest + block
            if block:
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]
            else:
                rest = b""
            if not data.strip():
                continue
            try:
                df = pl.read_csv(io.BytesIO(header + data), columns=cols, infer_schema_length=0)
            except pl.exceptions.ComputeError as e:
                if "utf-8" not in str(e).lower():
                    raise MedmixError(f"{path}: not a readable CSV after row {row0} (line {row0 + 1}): "
                                      f"{str(e).splitlines()[0]}") from None
                df = _lossy_chunk(path, header + data, cols, report)
            df = df.rename(lower)
            itemid = pl.col("itemid").str.strip_chars().cast(pl.Int64, strict=False)
            bad = df.select((itemid.is_null() & pl.col("itemid").is_not_null()).arg_true()).to_series()
            if bad.len():
                i = row0 + int(bad[0])
                raise MedmixError(f"{path}: row {i + 1} (line {i + 2}): field 'itemid' is "
                                  f"{df['itemid'][int(bad[0])]!r}, expected an integer")
            row0 += df.height
            df = df.with_columns(itemid, pl.col(key).str.strip_chars().cast(pl.Int64, strict=False))
            df = df.filter(pl.col("itemid").is_in(list(itemids)) & pl.col(key).is_in(list(keys)))
            parts.append(per_chunk(df) if per_chunk and df.height else df)
    parts = [p for p in parts if p.height]
    if not parts:
        empty = pl.DataFrame({c: [] for c in lower.values()}, schema={c: pl.String for c in lower.values()}) \
            .with_columns(pl.col("itemid").cast(pl.Int64), pl.col(key).cast(pl.Int64))
        return per_chunk(empty) if per_chunk else empty
    return pl.concat(parts)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def summarise_events(events: pl.DataFrame, names: dict[int, tuple[str, str]], stats: tuple[str, ...],
               counts: dict) -> pl.DataFrame:
    """events (sample_id, itemid, t, value) → one row per (sample_id, name) with the stats."""
    ev = events.with_columns(
        pl.col("itemid").replace_strict({k: v[0] for k, v in names.items()}, default=None,
                                        return_dtype=pl.String).alias("name"),
        pl.col("valuenum").cast(pl.Float64, strict=False).alias("v"),
    )
    n0 = ev.height
    ev = ev.filter(pl.col("v").is_not_null() & pl.col("v").is_finite())
    counts["ehr_values_non_numeric"] = counts.get("ehr_values_non_numeric", 0) + (n0 - ev.height)
    lo = pl.col("name").replace_strict({k: float(b[0]) for k, b in BOUNDS.items()}, default=float("-inf"),
                                        return_dtype=pl.Float64)
    hi = pl.col("name").replace_strict({k: float(b[1]) for k, b in BOUNDS.items()}, default=float("inf"),
                                        return_dtype=pl.Float64)
    n1 = ev.height
    ev = ev.filter((pl.col("v") >= lo) & (pl.col("v") <= hi))
    counts["ehr_values_out_of_bounds"] = counts.get("ehr_values_out_of_bounds", 0) + (n1 - ev.height)
    agg = {"mean": pl.col("v").mean(), "min": pl.col("v").min(), "max": pl.col("v").max(),
           "last": pl.col("v").sort_by("t").last()}
    return ev.group_by("sample_id", "name").agg([agg[s].alias(s) for s in stats])


def serialise_ehr(row_items: list[tuple[str, str, float]]) -> str:
    """(variable, statistic, value) items → the EHR text the encoders read: `name stat: value; ...`."""
    return "; ".join(f"{name} {stat}: {_fmt(v)}" for name, stat, v in row_items)
