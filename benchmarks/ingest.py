"""`make bench`: every performance target, measured against its reference in one run.

Steps (each against the same PostgreSQL, so the machine's noise mostly cancels in the ratios):

1. the API simulator serves a 1,000,000-record day (``BENCH_RECORDS``) over HTTP;
2. the project's own path: ``raw_attempts`` + ``postgres_attempts`` for that day through
   ``dagster.materialize`` in a subprocess (its peak RSS measured alone); rows/s = records /
   (the two steps' durations, from Dagster's step-success events);
3. the server's own limit: the same rows as a CSV file, ``COPY ... FROM '/file' (FORMAT csv)``
   into a logged table of the same shape with the ``created_at`` index;
4. the naive reference (``json.loads`` + ``ast.literal_eval`` + one INSERT per row, one commit)
   on ``BENCH_NAIVE_RECORDS`` records of the same shape;
5. the own path again at ``BENCH_SMALL_RECORDS`` (100,000) for the memory-growth comparison;
6. ``daily_metrics`` for the fixed day with 1M, then 10M rows in ``attempts`` (9M more rows are
   the day's rows shifted onto the following days, made server-side);
7. a 365-day backfill at 6,500 records a day as one run (all four assets), and
   ``raw_attempts`` over ``BENCH_CONCURRENCY_DAYS`` days against a simulator with 2 s latency,
   concurrent (default ``max_concurrent_requests``) vs sequential (1).

Prints a table, then a last line of JSON. Everything lives in schemas ``bench*`` and temp
directories, dropped at the end. Database: ``ITRESUME_BENCH_DATABASE_URL``.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import psycopg
import psycopg2
import requests
from psycopg import sql

from itresume_pipeline.assets.metrics import upsert_daily_metrics
from itresume_pipeline.local.simulator import ApiSimulator, render_day_json
from itresume_pipeline.resources.postgres import PostgresResource

DB_URL = os.environ.get(
    "ITRESUME_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RECORDS = int(os.environ.get("BENCH_RECORDS", 1_000_000))
SMALL_RECORDS = int(os.environ.get("BENCH_SMALL_RECORDS", 100_000))
NAIVE_RECORDS = int(os.environ.get("BENCH_NAIVE_RECORDS", 50_000))
METRICS_FACTOR = int(os.environ.get("BENCH_METRICS_FACTOR", 10))
BACKFILL_DAYS = int(os.environ.get("BENCH_BACKFILL_DAYS", 365))
BACKFILL_PER_DAY = int(os.environ.get("BENCH_BACKFILL_PER_DAY", 6500))
CONCURRENCY_DAYS = int(os.environ.get("BENCH_CONCURRENCY_DAYS", 30))
CONCURRENCY_LATENCY_S = float(os.environ.get("BENCH_CONCURRENCY_LATENCY_S", 2.0))
SKIP = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))

DAY = date(2024, 10, 8)
BACKFILL_LAST = date(2024, 9, 30)
CLIENT, CLIENT_KEY = "bench", "bench-key"
SCHEMAS = ("bench", "bench_small", "bench_m1", "bench_m10", "bench_backfill", "bench_conc")
COLUMNS = (
    "user_id, oauth_consumer_key, lis_result_sourcedid, lis_outcome_service_url, "
    "is_correct, attempt_type, created_at"
)

TARGETS = {
    "own_vs_server_copy": 0.60,
    "own_vs_naive": 25.0,
    "peak_rss_1m_mb": 350.0,
    "rss_growth_100k_to_1m": 2.0,  # 10x the records for < 2x the memory
    "metrics_ratio": 1.5,
    "backfill_s": 180.0,
    "concurrency_ratio": 1 / 3,
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def drop_schemas() -> None:
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        for schema in SCHEMAS:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def run_child(spec: dict, home: Path) -> dict:
    """Materialize in a fresh process: its peak RSS is the materialization's alone."""
    env = {**os.environ, "ITRESUME_HOME": str(home), "ITRESUME_LOG_DIR": str(home / "logs")}
    env.pop("ITRESUME_DATABASE_URL", None)
    env.pop("ITRESUME_SHEETS_SPREADSHEET_ID", None)
    env.pop("ITRESUME_SHEETS_CREDENTIALS", None)
    env.pop("SHEETS_EMULATOR_HOST", None)
    env["ITRESUME_SHEETS_BACKEND"] = "csv"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.materialize_child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"materialization failed:\n{proc.stderr[-4000:]}")
    report = json.loads(lines[-1])
    if not report["success"]:
        raise RuntimeError(f"materialization failed: {report['failures']}\n{proc.stderr[-3000:]}")
    return report


def child_spec(sim: ApiSimulator, schema: str, assets: list[str], first: date, last: date, **kw):
    return {
        "api_url": sim.url,
        "client": CLIENT,
        "client_key": CLIENT_KEY,
        "db_url": DB_URL,
        "schema": schema,
        "assets": assets,
        "first_day": first.isoformat(),
        "last_day": last.isoformat(),
        **kw,
    }


def warm_simulator(sim: ApiSimulator, day: date) -> float:
    """Render the day in the simulator's cache (one full request), so serving is all we time."""
    began = time.perf_counter()
    params = {
        "client": CLIENT,
        "client_key": CLIENT_KEY,
        "start": f"{day.isoformat()} 00:00:00",
        "end": f"{(day + timedelta(days=1)).isoformat()} 00:00:00",
    }
    with requests.get(sim.url, params=params, stream=True, timeout=600) as response:
        response.raise_for_status()
        for _ in response.iter_content(1 << 20):
            pass
    return time.perf_counter() - began


# --------------------------------------------------------------------------- own path
def own_path(sim: ApiSimulator, schema: str, records: int, tmp: Path) -> dict:
    home = tmp / f"home-{schema}"
    spec = child_spec(sim, schema, ["raw_attempts", "postgres_attempts"], DAY, DAY)
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the same clean start as the server's COPY gets
    report = run_child(spec, home)
    seconds = report["steps_s"]["raw_attempts"] + report["steps_s"]["postgres_attempts"]
    loaded = report["metadata"]["postgres_attempts"]["loaded"]
    if loaded != records:
        raise RuntimeError(f"own path loaded {loaded} rows, expected {records}")
    shutil.rmtree(home, ignore_errors=True)
    return {
        "records": records,
        "seconds": seconds,
        "fetch_s": report["steps_s"]["raw_attempts"],
        "load_s": report["steps_s"]["postgres_attempts"],
        "wall_s": report["wall_s"],
        "rows_per_s": records / seconds,
        "peak_rss_mb": report["peak_rss_mb"],
    }


# --------------------------------------------------------------------------- server COPY
def server_copy(tmp: Path) -> dict:
    """The same rows as CSV in a file the server reads itself: the ingest ceiling."""
    folder = tmp / "copy"
    folder.mkdir(mode=0o755)
    os.chmod(tmp, 0o755)
    path = folder / "attempts.csv"
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        with (
            open(path, "wb") as out,
            conn.cursor().copy(
                f"COPY (SELECT {COLUMNS} FROM bench.attempts) TO STDOUT (FORMAT csv)"
            ) as copy,
        ):
            for block in copy:
                out.write(block)
        os.chmod(path, 0o644)
        conn.execute("DROP TABLE IF EXISTS bench.attempts_copy")
        conn.execute("CREATE TABLE bench.attempts_copy (LIKE bench.attempts INCLUDING ALL)")
        conn.execute("CHECKPOINT")
        began = time.perf_counter()
        with conn.transaction():
            cur = conn.execute(f"COPY bench.attempts_copy ({COLUMNS}) FROM '{path}' (FORMAT csv)")
            rows = cur.rowcount
        seconds = time.perf_counter() - began
        conn.execute("DROP TABLE bench.attempts_copy")
    size = path.stat().st_size
    path.unlink()
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "csv_bytes": size}


# --------------------------------------------------------------------------- naive reference
def naive(records: int) -> dict:
    """What most published loaders do: whole payload in memory, literal_eval, INSERT per row."""
    body = render_day_json(DAY, attempts_per_day=records)
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench.attempts_naive")
        conn.execute("CREATE TABLE bench.attempts_naive (LIKE bench.attempts INCLUDING ALL)")
    conn = psycopg2.connect(DB_URL)
    began = time.perf_counter()
    cur = conn.cursor()
    for record in json.loads(body):
        params = ast.literal_eval(record["passback_params"])
        cur.execute(
            f"INSERT INTO bench.attempts_naive ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                record["lti_user_id"],
                params.get("oauth_consumer_key"),
                params.get("lis_result_sourcedid"),
                params.get("lis_outcome_service_url"),
                None if record["is_correct"] is None else bool(record["is_correct"]),
                record["attempt_type"],
                record["created_at"],
            ),
        )
    conn.commit()
    seconds = time.perf_counter() - began
    conn.close()
    with psycopg.connect(DB_URL, autocommit=True) as pg:
        rows = pg.execute("SELECT count(*) FROM bench.attempts_naive").fetchone()[0]
        pg.execute("DROP TABLE bench.attempts_naive")
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


# --------------------------------------------------------------------------- metrics
def build_metrics_table(schema: str, copies: int) -> tuple[int, float]:
    """`schema`.attempts = the fixed day's rows, plus `copies - 1` copies shifted a day each.

    Both tables (1x and 10x) are built the same way, so they differ only in size. Filling many
    rows is much faster with the index built once afterwards (set-up only; the loader never
    does this on a table holding other days).
    """
    warehouse = PostgresResource(database_url=DB_URL, schema_name=schema)
    with warehouse.connect() as conn:  # runs the project's migrations: same tables and index
        conn.commit()
    began = time.perf_counter()
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, "attempts_created_at_idx"))
        )
        conn.execute(
            sql.SQL(
                f"INSERT INTO {{}} ({COLUMNS}) "
                "SELECT user_id, oauth_consumer_key, lis_result_sourcedid, "
                "lis_outcome_service_url, is_correct, attempt_type, "
                "created_at + make_interval(days => k) "
                "FROM generate_series(0, %s) AS k, bench.attempts "
                "WHERE created_at >= %s AND created_at < %s ORDER BY k, created_at"
            ).format(sql.Identifier(schema, "attempts")),
            (copies - 1, DAY, DAY + timedelta(days=1)),
        )
        conn.execute(
            sql.SQL("CREATE INDEX attempts_created_at_idx ON {} (created_at)").format(
                sql.Identifier(schema, "attempts")
            )
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "attempts")))
        rows = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "attempts"))
        ).fetchone()[0]
    return rows, time.perf_counter() - began


def metrics_plan(schema: str) -> str:
    """How PostgreSQL reads `attempts` for the day (the scan node of the upsert's plan)."""
    warehouse = PostgresResource(database_url=DB_URL, schema_name=schema)
    with warehouse.connect() as conn, conn.transaction():
        plan = conn.execute(
            sql.SQL("EXPLAIN ") + warehouse.query("daily_metrics_upsert.sql"),
            {"start": DAY, "end": DAY + timedelta(days=1)},
        ).fetchall()
    scans = [line[0].strip(" ->") for line in plan if "Scan" in line[0] and "attempts" in line[0]]
    return scans[0].split("  (")[0] if scans else "?"


def metrics_cost() -> dict:
    """daily_metrics for the fixed day, 1x vs 10x rows; timings alternate to share the noise."""
    small_rows, small_fill = build_metrics_table("bench_m1", 1)
    log(f"metrics: {small_rows:,}-row table built in {small_fill:.0f} s")
    big_rows, big_fill = build_metrics_table("bench_m10", METRICS_FACTOR)
    log(f"metrics: {big_rows:,}-row table built in {big_fill:.0f} s")
    small = PostgresResource(database_url=DB_URL, schema_name="bench_m1")
    big = PostgresResource(database_url=DB_URL, schema_name="bench_m10")
    times: dict[str, list[float]] = {"small": [], "big": []}
    rows: dict[str, dict] = {}
    for warehouse in (small, big):  # warm-up: the caches a daily run would find
        upsert_daily_metrics(warehouse, DAY, DAY)
    for _ in range(7):
        for label, warehouse in (("small", small), ("big", big)):
            began = time.perf_counter()
            rows[label] = upsert_daily_metrics(warehouse, DAY, DAY)[0]
            times[label].append(time.perf_counter() - began)
    if rows["small"] != rows["big"]:
        raise RuntimeError(f"the fixed day's metrics differ: {rows['small']} vs {rows['big']}")
    small_s, big_s = statistics.median(times["small"]), statistics.median(times["big"])
    return {
        "rows_small": small_rows,
        "rows_big": big_rows,
        "seconds_small": small_s,
        "seconds_big": big_s,
        "ratio": big_s / small_s,
        "fill_s": small_fill + big_fill,
        "day_attempts": rows["small"]["attempts"],
        "plan_small": metrics_plan("bench_m1"),
        "plan_big": metrics_plan("bench_m10"),
    }


# --------------------------------------------------------------------------- backfill
def backfill(tmp: Path) -> dict:
    first = BACKFILL_LAST - timedelta(days=BACKFILL_DAYS - 1)
    with ApiSimulator(
        client=CLIENT, client_key=CLIENT_KEY, attempts_per_day=BACKFILL_PER_DAY
    ) as sim:
        spec = child_spec(
            sim,
            "bench_backfill",
            ["raw_attempts", "postgres_attempts", "daily_metrics", "sheets_report"],
            first,
            BACKFILL_LAST,
        )
        began = time.perf_counter()
        report = run_child(spec, tmp / "home-backfill")
        process_s = time.perf_counter() - began
    with psycopg.connect(DB_URL) as conn:
        rows, days = conn.execute(
            "SELECT sum(attempts), count(*) FROM bench_backfill.daily_metrics"
        ).fetchone()
    if days != BACKFILL_DAYS:
        raise RuntimeError(f"backfill produced metrics for {days} days, expected {BACKFILL_DAYS}")
    return {
        "days": BACKFILL_DAYS,
        "rows": int(rows),
        "run_wall_s": report["wall_s"],
        "process_wall_s": process_s,
        "steps_s": report["steps_s"],
        "peak_rss_mb": report["peak_rss_mb"],
    }


def concurrency(tmp: Path) -> dict:
    first = BACKFILL_LAST - timedelta(days=CONCURRENCY_DAYS - 1)
    results = {}
    with ApiSimulator(
        client=CLIENT,
        client_key=CLIENT_KEY,
        attempts_per_day=BACKFILL_PER_DAY,
        latency=CONCURRENCY_LATENCY_S,
    ) as sim:
        for label, workers in (("sequential", 1), ("concurrent", None)):
            extra = {} if workers is None else {"max_concurrent_requests": workers}
            spec = child_spec(sim, "bench_conc", ["raw_attempts"], first, BACKFILL_LAST, **extra)
            report = run_child(spec, tmp / f"home-conc-{label}")
            results[label] = report["steps_s"]["raw_attempts"]
            log(
                f"{CONCURRENCY_DAYS} days at {CONCURRENCY_LATENCY_S} s latency, {label}: "
                f"{results[label]:.1f} s"
            )
    return {
        "days": CONCURRENCY_DAYS,
        "latency_s": CONCURRENCY_LATENCY_S,
        "sequential_s": results["sequential"],
        "concurrent_s": results["concurrent"],
        "ratio": results["concurrent"] / results["sequential"],
    }


# --------------------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(DB_URL) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, PostgreSQL {server}, "
        f"Python {platform.python_version()}, load average at start {load:.2f}"
    )


def main() -> int:
    os.environ.setdefault("DAGSTER_HOME", tempfile.mkdtemp(prefix="bench-dagster-"))
    tmp = Path(tempfile.mkdtemp(prefix="itresume-bench-"))
    out: dict = {"machine": machine(), "records": RECORDS}
    log(out["machine"])
    drop_schemas()
    try:
        with ApiSimulator(client=CLIENT, client_key=CLIENT_KEY, attempts_per_day=RECORDS) as big:
            log(f"simulator: rendering a {RECORDS:,}-record day")
            out["generate_s"] = warm_simulator(big, DAY)
            log(f"own path: raw_attempts + postgres_attempts, {RECORDS:,} records")
            out["own"] = own_path(big, "bench", RECORDS, tmp)
            log(f"own path: {out['own']['rows_per_s']:,.0f} rows/s")
        log("server COPY from a CSV file")
        out["server_copy"] = server_copy(tmp)
        log(f"server COPY: {out['server_copy']['rows_per_s']:,.0f} rows/s")
        log(f"naive reference on {NAIVE_RECORDS:,} records")
        out["naive"] = naive(NAIVE_RECORDS)
        log(f"naive: {out['naive']['rows_per_s']:,.0f} rows/s")
        with ApiSimulator(
            client=CLIENT, client_key=CLIENT_KEY, attempts_per_day=SMALL_RECORDS
        ) as small:
            warm_simulator(small, DAY)
            log(f"own path at {SMALL_RECORDS:,} records (memory growth)")
            out["own_small"] = own_path(small, "bench_small", SMALL_RECORDS, tmp)
        if "metrics" not in SKIP:
            log(f"daily_metrics cost: 1x vs {METRICS_FACTOR}x rows in attempts")
            out["metrics"] = metrics_cost()
        if "backfill" not in SKIP:
            log(f"backfill: {BACKFILL_DAYS} days x {BACKFILL_PER_DAY} records, one run")
            out["backfill"] = backfill(tmp)
            log(f"backfill: {out['backfill']['run_wall_s']:.1f} s")
        if "concurrency" not in SKIP:
            out["concurrency"] = concurrency(tmp)
    finally:
        drop_schemas()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summarize(out)
    print_table(out, summary)
    print(json.dumps(summary, separators=(",", ":")))
    return 0 if all(summary["pass"].values()) else 1


def summarize(out: dict) -> dict:
    own, copy_, naive_ = out["own"], out["server_copy"], out["naive"]
    summary: dict = {
        "records": out["records"],
        "rows_per_s": {
            "own": round(own["rows_per_s"]),
            "server_copy": round(copy_["rows_per_s"]),
            "naive": round(naive_["rows_per_s"]),
        },
        "ratios": {
            "own_vs_server_copy": round(own["rows_per_s"] / copy_["rows_per_s"], 3),
            "own_vs_naive": round(own["rows_per_s"] / naive_["rows_per_s"], 1),
        },
        "peak_rss_mb": {
            "100k": round(out["own_small"]["peak_rss_mb"], 1),
            "1m": round(own["peak_rss_mb"], 1),
        },
    }
    growth = own["peak_rss_mb"] / out["own_small"]["peak_rss_mb"]
    summary["rss_growth_100k_to_1m"] = round(growth, 2)
    checks = {
        "ingest_60pct_of_server_copy": summary["ratios"]["own_vs_server_copy"]
        >= TARGETS["own_vs_server_copy"],
        "ingest_25x_naive": summary["ratios"]["own_vs_naive"] >= TARGETS["own_vs_naive"],
        "peak_rss_1m_le_350mb": own["peak_rss_mb"] <= TARGETS["peak_rss_1m_mb"],
        "rss_sublinear": growth < TARGETS["rss_growth_100k_to_1m"],
    }
    if "metrics" in out:
        summary["metrics_ratio"] = round(out["metrics"]["ratio"], 3)
        checks["metrics_ratio_le_1_5"] = out["metrics"]["ratio"] <= TARGETS["metrics_ratio"]
    if "backfill" in out:
        summary["backfill_s"] = round(out["backfill"]["run_wall_s"], 1)
        checks["backfill_365d_le_180s"] = out["backfill"]["run_wall_s"] <= TARGETS["backfill_s"]
    if "concurrency" in out:
        summary["concurrency_ratio"] = round(out["concurrency"]["ratio"], 3)
        checks["concurrency_le_one_third"] = (
            out["concurrency"]["ratio"] <= TARGETS["concurrency_ratio"]
        )
    summary["pass"] = checks
    return summary


def print_table(out: dict, summary: dict) -> None:
    own, copy_, naive_, small = out["own"], out["server_copy"], out["naive"], out["own_small"]
    ok = {True: "PASS", False: "FAIL"}
    checks = summary["pass"]
    print(f"machine: {out['machine']}")
    print(f"simulator rendered the {RECORDS:,}-record day in {out['generate_s']:.1f} s")
    print()
    print(f"{'loader':<44} {'rows':>11} {'seconds':>9} {'rows/s':>10}")
    print(
        f"{'naive (json+literal_eval+INSERT per row)':<44} {naive_['rows']:>11,} "
        f"{naive_['seconds']:>9.2f} {naive_['rows_per_s']:>10,.0f}"
    )
    print(
        f"{'own: raw_attempts + postgres_attempts':<44} {own['records']:>11,} "
        f"{own['seconds']:>9.2f} {own['rows_per_s']:>10,.0f}"
    )
    print(f"{'  of which raw_attempts (fetch+land+count)':<44} {'':>11} {own['fetch_s']:>9.2f}")
    print(f"{'  of which postgres_attempts (parse+load)':<44} {'':>11} {own['load_s']:>9.2f}")
    print(
        f"{'server COPY FROM file (csv, logged, index)':<44} {copy_['rows']:>11,} "
        f"{copy_['seconds']:>9.2f} {copy_['rows_per_s']:>10,.0f}"
    )
    print()
    print(f"{'target':<44} {'measured':>14} {'goal':>10}  result")
    rows = [
        (
            "own / server COPY",
            f"{summary['ratios']['own_vs_server_copy']:.1%}",
            ">= 60%",
            checks["ingest_60pct_of_server_copy"],
        ),
        (
            "own / naive",
            f"{summary['ratios']['own_vs_naive']:.1f}x",
            ">= 25x",
            checks["ingest_25x_naive"],
        ),
        (
            f"peak RSS, {RECORDS:,} records",
            f"{own['peak_rss_mb']:.0f} MB",
            "<= 350 MB",
            checks["peak_rss_1m_le_350mb"],
        ),
        (
            f"peak RSS growth {small['records']:,} -> {RECORDS:,}",
            f"{small['peak_rss_mb']:.0f}->{own['peak_rss_mb']:.0f} MB",
            "< 2x",
            checks["rss_sublinear"],
        ),
    ]
    if "metrics" in out:
        m = out["metrics"]
        rows.append(
            (
                f"daily_metrics {m['rows_big']:,} vs {m['rows_small']:,} rows",
                f"{m['seconds_big']:.3f}/{m['seconds_small']:.3f}s",
                "<= 1.5x",
                checks["metrics_ratio_le_1_5"],
            )
        )
    if "backfill" in out:
        b = out["backfill"]
        rows.append(
            (
                f"backfill {b['days']} days, {b['rows']:,} rows, one run",
                f"{b['run_wall_s']:.1f} s",
                "<= 180 s",
                checks["backfill_365d_le_180s"],
            )
        )
    if "concurrency" in out:
        c = out["concurrency"]
        rows.append(
            (
                f"{c['days']} days @ {c['latency_s']:g} s latency, conc/seq",
                f"{c['concurrent_s']:.1f}/{c['sequential_s']:.1f}s",
                "<= 0.333",
                checks["concurrency_le_one_third"],
            )
        )
    for name, measured, goal, passed in rows:
        print(f"{name:<44} {measured:>14} {goal:>10}  {ok[passed]}")
    if "backfill" in out:
        b = out["backfill"]
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in b["steps_s"].items())
        print(f"backfill steps: {steps}; peak RSS {b['peak_rss_mb']:.0f} MB")
    if "metrics" in out:
        m = out["metrics"]
        print(
            f"metrics: plans {m['plan_small']!r} (1x) / {m['plan_big']!r} (10x); "
            f"building the tables took {m['fill_s']:.0f} s (set-up)"
        )
    print()


if __name__ == "__main__":
    sys.exit(main())
