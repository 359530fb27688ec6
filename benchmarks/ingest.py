"""`make bench`: every performance target, measured against its reference in one run.

Steps (each against the same PostgreSQL, so the machine's noise mostly cancels in the ratios):

1. the API simulator serves a 1,000,000-record day (``BENCH_RECORDS``) over HTTP;
2. the project's own path: ``raw_attempts`` + ``postgres_attempts`` for that day through
   ``dagster.materialize`` in a subprocess (its peak RSS measured alone); rows/s = records /
   (the two steps' durations, from Dagster's step-success events);
3. the server's own limit: the same rows as a CSV file, ``COPY ... FROM '/file' (FORMAT csv)``
   into a logged table of the same shape with an index on ``created_at``;
4. steady reruns: the same day ``BENCH_RERUNS`` (4) more times, each re-downloaded and reloaded
   (``reload_unchanged``), with the day's load time and the size of ``attempts`` after each;
5. the naive reference (``json.loads`` + ``ast.literal_eval`` + one INSERT per row, one commit)
   on ``BENCH_NAIVE_RECORDS`` records of the same shape;
6. the own path again at ``BENCH_SMALL_RECORDS`` (100,000) for the memory-growth comparison;
7. ``daily_metrics`` for the fixed day with 1M, then 10M rows in ``attempts`` (9M more rows are
   the day's rows shifted onto the following days, made server-side);
8. a 365-day backfill at 6,500 records a day as one run (all four assets), and
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
from itresume_pipeline.loading import add_day_partitions
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
RERUNS = int(os.environ.get("BENCH_RERUNS", 4))
SKIP = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))  # naive,reruns,metrics,...

DAY = date(2024, 10, 8)
BACKFILL_LAST = date(2024, 9, 30)
CLIENT, CLIENT_KEY = "bench", "bench-key"
SCHEMAS = ("bench", "bench_small", "bench_m1", "bench_m10", "bench_backfill", "bench_conc")
COLUMNS = (
    "user_id, oauth_consumer_key, lis_result_sourcedid, lis_outcome_service_url, "
    "is_correct, attempt_type, created_at"
)

TARGETS = {
    "own_vs_server_copy": 0.80,  # the first load and the steady-state rerun alike
    "own_vs_naive": 25.0,
    "peak_rss_1m_mb": 250.0,
    "rss_growth_100k_to_1m": 2.0,  # 10x the records for < 2x the memory
    "rerun_time_ratio": 1.1,  # the last rerun's load against the first load's
    "rerun_size_ratio": 1.1,  # attempts on disk after the last rerun against after the first
    "metrics_ratio": 1.1,
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
def attempts_bytes(schema: str) -> int:
    """`attempts` on disk: every partition, its indexes and TOAST included."""
    with psycopg.connect(DB_URL) as conn:
        return conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint "
            "FROM pg_partition_tree(%s::regclass)",
            (f"{schema}.attempts",),
        ).fetchone()[0]


def own_path(sim: ApiSimulator, schema: str, records: int, tmp: Path, rerun: bool = False) -> dict:
    """raw_attempts + postgres_attempts for the day; a rerun reloads the same payload again."""
    home = tmp / f"home-{schema}"
    spec = child_spec(sim, schema, ["raw_attempts", "postgres_attempts"], DAY, DAY)
    if rerun:
        spec["run_config"] = {"ops": {"postgres_attempts": {"config": {"reload_unchanged": True}}}}
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the same clean start as the server's COPY gets
    report = run_child(spec, home)
    seconds = report["steps_s"]["raw_attempts"] + report["steps_s"]["postgres_attempts"]
    loaded = report["metadata"]["postgres_attempts"]["loaded"]
    if loaded != records:
        raise RuntimeError(f"own path loaded {loaded} rows, expected {records}")
    return {
        "attempts_bytes": attempts_bytes(schema),
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
        conn.execute("CREATE INDEX ON bench.attempts_copy (created_at)")
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
        conn.execute("CREATE INDEX ON bench.attempts_naive (created_at)")
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
    """`schema`.attempts = the fixed day's rows, plus `copies - 1` copies shifted a day each,
    in the project's own day partitions; both tables differ only in size."""
    warehouse = PostgresResource(database_url=DB_URL, schema_name=schema)
    began = time.perf_counter()
    with warehouse.connect() as conn:  # runs the project's migrations: the same tables
        for k in range(copies):
            add_day_partitions(conn, warehouse, DAY + timedelta(days=k))
    with psycopg.connect(DB_URL, autocommit=True) as conn:
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
            sql.SQL("EXPLAIN ") + warehouse.query("daily_metrics_upsert.sql"), {"day": DAY}
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
            out["reruns"] = []
            for n in range(RERUNS if "reruns" not in SKIP else 0):
                out["reruns"].append(own_path(big, "bench", RECORDS, tmp, rerun=True))
                rerun = out["reruns"][-1]
                log(
                    f"rerun {n + 1}: load {rerun['load_s']:.2f} s, {rerun['rows_per_s']:,.0f} "
                    f"rows/s, attempts {rerun['attempts_bytes'] / 2**20:.0f} MB"
                )
        if "naive" not in SKIP:
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
    own, copy_, small = out["own"], out["server_copy"], out["own_small"]
    ratio = {"first": own["rows_per_s"] / copy_["rows_per_s"]}
    checks = {
        "first_load_80pct_of_server_copy": ratio["first"] >= TARGETS["own_vs_server_copy"],
        "peak_rss_1m_le_250mb": own["peak_rss_mb"] <= TARGETS["peak_rss_1m_mb"],
        "rss_sublinear": own["peak_rss_mb"] / small["peak_rss_mb"]
        < TARGETS["rss_growth_100k_to_1m"],
    }
    summary: dict = {
        "records": out["records"],
        "rows_per_s": {
            "first": round(own["rows_per_s"]),
            "server_copy": round(copy_["rows_per_s"]),
        },
        "peak_rss_mb": {"100k": round(small["peak_rss_mb"], 1), "1m": round(own["peak_rss_mb"], 1)},
    }
    if out["reruns"]:
        last = out["reruns"][-1]
        ratio["rerun"] = last["rows_per_s"] / copy_["rows_per_s"]
        summary["rows_per_s"]["rerun"] = round(last["rows_per_s"])
        summary["rerun_time_ratio"] = round(last["load_s"] / own["load_s"], 3)
        summary["rerun_size_ratio"] = round(last["attempts_bytes"] / own["attempts_bytes"], 3)
        peak = max(r["peak_rss_mb"] for r in [own, *out["reruns"]])
        checks["rerun_80pct_of_server_copy"] = ratio["rerun"] >= TARGETS["own_vs_server_copy"]
        checks["rerun_time_le_1_1"] = summary["rerun_time_ratio"] <= TARGETS["rerun_time_ratio"]
        checks["rerun_size_le_1_1"] = summary["rerun_size_ratio"] <= TARGETS["rerun_size_ratio"]
        checks["peak_rss_1m_le_250mb"] = peak <= TARGETS["peak_rss_1m_mb"]
    if "naive" in out:
        ratio["naive"] = own["rows_per_s"] / out["naive"]["rows_per_s"]
        checks["ingest_25x_naive"] = ratio["naive"] >= TARGETS["own_vs_naive"]
    summary["ratios"] = {k: round(v, 3) for k, v in ratio.items()}
    if "metrics" in out:
        summary["metrics_ratio"] = round(out["metrics"]["ratio"], 3)
        checks["metrics_ratio_le_1_1"] = out["metrics"]["ratio"] <= TARGETS["metrics_ratio"]
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
    own, copy_, small = out["own"], out["server_copy"], out["own_small"]
    ok = {True: "PASS", False: "FAIL"}
    checks, ratios = summary["pass"], summary["ratios"]
    print(f"machine: {out['machine']}")
    print(f"simulator rendered the {RECORDS:,}-record day in {out['generate_s']:.1f} s")
    print()
    print(f"{'loader':<46} {'rows':>11} {'seconds':>9} {'rows/s':>10} {'attempts MB':>12}")
    loaders = [("own, first load: raw_attempts + postgres_attempts", own)]
    loaders += [(f"own, rerun {n}", r) for n, r in enumerate(out["reruns"], 1)]
    for name, r in loaders:
        print(
            f"{name:<46} {r['records']:>11,} {r['seconds']:>9.2f} {r['rows_per_s']:>10,.0f} "
            f"{r['attempts_bytes'] / 2**20:>12.0f}"
        )
        print(f"{'  of which postgres_attempts (parse+load)':<46} {'':>11} {r['load_s']:>9.2f}")
    print(
        f"{'server COPY FROM file (csv, logged, index)':<46} {copy_['rows']:>11,} "
        f"{copy_['seconds']:>9.2f} {copy_['rows_per_s']:>10,.0f}"
    )
    if "naive" in out:
        n = out["naive"]
        print(
            f"{'naive (json+literal_eval+INSERT per row)':<46} {n['rows']:>11,} "
            f"{n['seconds']:>9.2f} {n['rows_per_s']:>10,.0f}"
        )
    print()
    print(f"{'target':<46} {'measured':>14} {'goal':>10}  result")
    rows = [
        ("first load / server COPY", f"{ratios['first']:.1%}", ">= 80%", "first_load_80pct"),
        (
            f"peak RSS, {RECORDS:,} records (all loads)",
            f"{max(r['peak_rss_mb'] for _, r in loaders):.0f} MB",
            "<= 250 MB",
            "peak_rss",
        ),
        (
            f"peak RSS growth {small['records']:,} -> {RECORDS:,}",
            f"{small['peak_rss_mb']:.0f}->{own['peak_rss_mb']:.0f} MB",
            "< 2x",
            "rss_sublinear",
        ),
    ]
    if out["reruns"]:
        rows += [
            ("steady rerun / server COPY", f"{ratios['rerun']:.1%}", ">= 80%", "rerun_80pct"),
            (
                "last rerun's load / first load's",
                f"{summary['rerun_time_ratio']:.3f}x",
                "<= 1.1x",
                "rerun_time",
            ),
            (
                "attempts size, last rerun / first",
                f"{summary['rerun_size_ratio']:.3f}x",
                "<= 1.1x",
                "rerun_size",
            ),
        ]
    if "naive" in out:
        rows.append(("own / naive", f"{ratios['naive']:.1f}x", ">= 25x", "ingest_25x_naive"))
    if "metrics" in out:
        m = out["metrics"]
        rows.append(
            (
                f"daily_metrics {m['rows_big']:,} vs {m['rows_small']:,} rows",
                f"{m['seconds_big']:.3f}/{m['seconds_small']:.3f}s",
                "<= 1.1x",
                "metrics_ratio",
            )
        )
    if "backfill" in out:
        b = out["backfill"]
        rows.append(
            (
                f"backfill {b['days']} days, {b['rows']:,} rows, one run",
                f"{b['run_wall_s']:.1f} s",
                "<= 180 s",
                "backfill",
            )
        )
    if "concurrency" in out:
        c = out["concurrency"]
        rows.append(
            (
                f"{c['days']} days @ {c['latency_s']:g} s latency, conc/seq",
                f"{c['concurrent_s']:.1f}/{c['sequential_s']:.1f}s",
                "<= 0.333",
                "concurrency",
            )
        )
    for name, measured, goal, check in rows:
        passed = all(v for k, v in checks.items() if k.startswith(check))
        print(f"{name:<46} {measured:>14} {goal:>10}  {ok[passed]}")
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
