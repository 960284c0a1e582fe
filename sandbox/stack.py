"""The whole pipeline locally, in the background, in the shape it runs in production.

    python -m sandbox.stack up [--port 8080] [--state-dir .stack]   (scripts/up.sh, make up)
    python -m sandbox.stack stop [--state-dir .stack]               (scripts/stop.sh, make stop)
    python -m sandbox.stack status [--state-dir .stack]

``up`` starts, each as a background process with a log and a pid file under the state directory:
PostgreSQL (Airflow's metadata DB), moto's S3 server (the shared audience state store), the Braze
and Lytics sandboxes (Lytics membership churns every few minutes), an SFTP server standing in for
Lytics' (its host key is pinned by the ``lytics_sftp`` connection), and Airflow 3: api-server,
scheduler (LocalExecutor, parallelism 4), dag-processor and triggerer. Connections, the
``braze_api`` pool and variables come from ``airflow_settings.yaml`` (loaded through the REST API:
they show under Admin), the pipeline file from the same file's ``braze_lytics.pipeline``. DAGs stay
paused until you unpause them in the UI. It prints the URL, the login and where the logs are,
then returns; the stack keeps running until ``stop``.

``up`` on a running stack says so and changes nothing. ``stop`` ends every process it started (its
whole process group and descendants: stop signal, up to 30 s, then SIGKILL). Airflow's DB (run
history) stays in ``<state>/postgres``; the sandboxes and S3 start empty on every ``up``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import requests
import yaml

from sandbox import stack_procs, stack_settings
from sandbox.stack_airflow import (
    airflow_env,
    api_token,
    expected_dags,
    health,
    migrate_db,
    start_airflow,
    write_env_file,
    write_passwords_file,
)
from sandbox.stack_services import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    AIRFLOW_PROCS,
    ALL_PROCS,
    DB_PROCS,
    REPO,
    SANDBOX_PROCS,
    Layout,
    StackError,
    load_secrets,
    prepare_postgres,
    start_postgres,
    start_sandboxes,
    wait_until,
)

DEFAULT_STATE_DIR = REPO / ".stack"
DEFAULT_SETTINGS = REPO / "airflow_settings.yaml"


def say(msg: str) -> None:
    print(msg, flush=True)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _procs(layout: Layout) -> dict[str, stack_procs.Proc]:
    found = {}
    for name in ALL_PROCS:
        proc = stack_procs.read_pid_file(layout.pid_file(name))
        if proc is not None:
            found[name] = proc
    return found


def _stop_cmd(layout: Layout) -> str:
    same = layout.root == DEFAULT_STATE_DIR.resolve()
    return "scripts/stop.sh" + ("" if same else f" --state-dir {_rel(layout.root)}")


def _summary(layout: Layout, info: dict) -> None:
    dir_ = _rel(layout.root)
    say("")
    say(f"  Airflow UI      {info['url']}    login: {ADMIN_USER} / {ADMIN_PASSWORD}")
    say(f"  DAGs            {', '.join(info.get('dags') or [])}")
    say("                  all paused: unpause one in the UI (toggle) to run it - a triggered run of a")
    say("                  paused DAG stays queued until it is unpaused. Unpausing starts its schedule too")
    if info.get("schedule", True):
        say("                  (hourly/daily); for only the runs you trigger: stop, then up --no-schedule")
    else:
        say("                  - not here: this stack runs with --no-schedule (only triggered/backfill runs)")
    say(f"  Braze sandbox   {info['braze_url']}")
    say(f"  Lytics sandbox  {info['lytics_url']}   (membership churns every "
        f"{info.get('churn_minutes', '?')} min)")
    say(f"  SFTP (Lytics)   sftp://lytics@127.0.0.1:{info['sftp_port']}   files land in {dir_}/sftp/upload/")
    say(f"  S3 (moto)       {info['s3_url']}   bucket {info['bucket']} (audience state)")
    say(f"  PostgreSQL      127.0.0.1:{info['postgres_port']}  database airflow (Airflow's metadata DB)")
    say(f"  State dir       {dir_}/   logs: {dir_}/logs/<process>.log   pids: {dir_}/pids/")
    say(f"  Airflow CLI     source {dir_}/env.sh && airflow dags list")
    say(f"  Stop            {_stop_cmd(layout)}" + ("   (or: make stop)" if "--" not in _stop_cmd(layout) else ""))


# --------------------------------------------------------------------------------------- up
def up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    layout = Layout(Path(args.state_dir))
    running = {n: p for n, p in _procs(layout).items() if p.alive}
    if running:
        if set(running) == set(ALL_PROCS):
            say(f"==> The stack is already running (state dir {_rel(layout.root)}); nothing to do.")
            try:
                _summary(layout, json.loads(layout.stack_file.read_text()))
            except (OSError, ValueError, KeyError):
                pass
            return 0
        dead = [n for n in ALL_PROCS if n not in running]
        say(f"==> A stack is partly running under {_rel(layout.root)}: "
            f"running {', '.join(running)}; not running {', '.join(dead)}.")
        say(f"    Stop it first ({_stop_cmd(layout)}), then run up again.")
        return 1
    if args.parallelism < 1:
        raise StackError("--parallelism must be >= 1")
    if stack_procs.port_in_use(args.host, args.port):
        say(f"ERROR: port {args.port} on {args.host} is already in use, so the Airflow API server cannot "
            f"start there. Nothing was started. Stop what uses it, or choose another port: "
            f"scripts/up.sh --port 8081 (or STACK_PORT=8081).")
        return 2

    # A broken settings file (or an unknown ${NAME}) fails here, before anything is started.
    settings_raw = stack_settings.load(Path(args.settings), {k: "x" for k in stack_settings.PLACEHOLDERS})
    sandbox_cfg = settings_raw["braze_lytics"].get("sandbox") or {}
    layout.logs.mkdir(parents=True, exist_ok=True)
    for stale in layout.pids.glob("*.pid") if layout.pids.exists() else []:
        stale.unlink()
    secrets_ = load_secrets(layout)
    taken = {args.port}
    ports = {}
    for name in ("postgres", "s3", "braze", "lytics", "sftp", "worker_logs", "trigger_logs"):
        ports[name] = stack_procs.free_port(avoid=taken)
        taken.add(ports[name])

    def step(n: int, text: str) -> None:
        say(f"==> [{n}/6] {text}  (+{time.monotonic() - t0:.0f}s)")

    try:
        step(1, f"PostgreSQL on 127.0.0.1:{ports['postgres']} (Airflow's metadata DB)")
        prepare_postgres(layout, secrets_["postgres_password"], log=say)
        start_postgres(layout, ports["postgres"], secrets_["postgres_password"], dict(os.environ))

        step(2, "sandboxes: S3 (moto), Braze, Lytics, SFTP")
        sb = start_sandboxes(layout, sandbox_cfg, secrets_, ports, dict(os.environ))
        values = sb.placeholders()
        settings = stack_settings.load(Path(args.settings), values)
        pipeline = stack_settings.pipeline_config(settings, REPO)
        layout.pipeline_file.write_text(
            f"# Generated by sandbox/stack.py from {_rel(Path(args.settings))} (braze_lytics.pipeline)\n"
            + yaml.safe_dump(pipeline, sort_keys=False))
        env = airflow_env(layout, secrets_=secrets_, api_host=args.host, api_port=args.port,
                          pg_port=ports["postgres"], parallelism=args.parallelism,
                          schedule=not args.no_schedule, s3=values,
                          log_server_ports=(ports["worker_logs"], ports["trigger_logs"]))
        write_env_file(layout, env)
        write_passwords_file(layout)

        step(3, "airflow db migrate")
        migrate_db(layout, env)

        step(4, f"Airflow: api-server on port {args.port}, scheduler (LocalExecutor, parallelism "
                f"{args.parallelism}), dag-processor, triggerer")
        procs = {p.name: p for p in start_airflow(layout, env, args.host, args.port)}
        url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # noqa: S104
        base = f"http://{url_host}:{args.port}"
        wait_until("Airflow api-server", lambda: health(base)["metadatabase"]["status"] == "healthy",
                   timeout=args.timeout, proc=procs["airflow-api-server"], log=layout.log("airflow-api-server"))

        step(5, f"connections, pools, variables from {_rel(Path(args.settings))}")
        token = api_token(base)
        applied = stack_settings.apply(settings, base, token)
        for kind, names in applied.items():
            if names:
                say(f"    {kind}: {', '.join(names)}")

        step(6, "waiting for scheduler, dag-processor, triggerer and the DAGs")
        for name, key in (("airflow-scheduler", "scheduler"), ("airflow-dag-processor", "dag_processor"),
                          ("airflow-triggerer", "triggerer")):
            wait_until(f"{name} heartbeat", lambda key=key: health(base)[key]["status"] == "healthy",
                       timeout=args.timeout, proc=procs[name], log=layout.log(name))
        wanted = expected_dags()
        listed: list[str] = []
        broken: dict[str, str] = {}  # DAG file -> last line of its import error

        def dags_parsed() -> bool:
            nonlocal listed, broken
            auth = {"Authorization": f"Bearer {token}"}
            resp = requests.get(f"{base}/api/v2/dags", params={"limit": 100}, headers=auth, timeout=10)
            resp.raise_for_status()
            listed = sorted(d["dag_id"] for d in resp.json()["dags"])
            resp = requests.get(f"{base}/api/v2/importErrors", params={"limit": 100}, headers=auth, timeout=10)
            resp.raise_for_status()
            broken = {Path(e["filename"]).name: (str(e.get("stack_trace") or "").strip().splitlines() or ["?"])[-1]
                      for e in resp.json()["import_errors"]}
            return all(dag_id in listed or file in broken for dag_id, file in wanted.items())

        wait_until("DAGs parsed (see logs/airflow-dag-processor.log)", dags_parsed, timeout=args.timeout,
                   proc=procs["airflow-dag-processor"], log=layout.log("airflow-dag-processor"), interval=2)
        for file, error in broken.items():
            say(f"    WARNING: dags/{file} does not import: {error} (the UI shows the whole error)")
    except BaseException as e:
        say("")
        if isinstance(e, KeyboardInterrupt):
            say("==> Interrupted: stopping what was started ...")
        elif isinstance(e, StackError | stack_settings.SettingsError):
            say(f"ERROR: {e}")
            say("==> Stopping what was started ...")
        else:
            say(f"ERROR: {type(e).__name__}: {e}")
            say("==> Stopping what was started ...")
        _stop(layout, quiet=True)
        say(f"    Logs are kept in {_rel(layout.logs)}/.")
        if isinstance(e, KeyboardInterrupt | StackError | stack_settings.SettingsError):
            return 1
        raise

    info = {
        "url": base, "api_port": args.port, "host": args.host, "dags": listed,
        "braze_url": values["BRAZE_URL"], "lytics_url": values["LYTICS_URL"], "sftp_port": ports["sftp"],
        "s3_url": values["S3_ENDPOINT"], "bucket": values["S3_BUCKET"], "postgres_port": ports["postgres"],
        "churn_minutes": sandbox_cfg.get("lytics_churn_every_minutes"),
        "parallelism": args.parallelism, "schedule": not args.no_schedule,
        "state_dir": str(layout.root), "sftp_root": str(layout.sftp_root),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pids": {name: p.pid for name, p in _procs(layout).items()},
    }
    layout.stack_file.write_text(json.dumps(info, indent=2) + "\n")
    say(f"==> The stack is up (took {time.monotonic() - t0:.0f}s); it runs in the background.")
    _summary(layout, info)
    return 0


# ------------------------------------------------------------------------------------- stop
def _stop(layout: Layout, *, quiet: bool = False) -> int:
    procs = _procs(layout)
    live = {n: p for n, p in procs.items() if p.alive}
    if not live:
        for p in procs.values():  # stale pid files of a stack that died on its own
            p.pid_file.unlink(missing_ok=True)
        if not quiet:
            say(f"==> Nothing is running under {_rel(layout.root)}.")
        return 0
    t0 = time.monotonic()
    stopped = 0
    for group, grace in ((AIRFLOW_PROCS, 45.0), (SANDBOX_PROCS, 20.0), (DB_PROCS, 30.0)):
        members = [procs[n] for n in group if n in procs]
        alive = [p for p in members if p.alive]
        if alive:
            say("    stopping " + ", ".join(f"{p.name} (pid {p.pid})" for p in alive))
        stack_procs.stop_all(members, grace=grace, log=say)
        stopped += len(alive)
    if not quiet:
        say(f"==> Stopped {stopped} processes in {time.monotonic() - t0:.0f}s "
            f"(logs kept in {_rel(layout.logs)}/; Airflow's DB in {_rel(layout.postgres)}/).")
    return 0


def stop(args: argparse.Namespace) -> int:
    return _stop(Layout(Path(args.state_dir)))


def status(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.state_dir))
    procs = _procs(layout)
    if not procs:
        say(f"Nothing started under {_rel(layout.root)}.")
        return 3
    for name in ALL_PROCS:
        p = procs.get(name)
        state = "not started" if p is None else ("running" if p.alive else "NOT RUNNING")
        pid = f"pid {p.pid}" if p else ""
        say(f"  {name:<22} {state:<12} {pid:<12} {_rel(layout.log(name))}")
    return 0 if all(p.alive for p in procs.values()) and len(procs) == len(ALL_PROCS) else 1


def _interrupted(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandbox.stack", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    state_default = os.environ.get("STACK_DIR") or str(DEFAULT_STATE_DIR)
    for name, help_ in (("up", "start everything in the background"), ("stop", "stop everything"),
                        ("status", "what is running")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--state-dir", default=state_default, help="default: .stack in the repository ($STACK_DIR)")
        if name == "up":
            p.add_argument("--port", type=int, default=int(os.environ.get("STACK_PORT") or 8080),
                           help="Airflow API server / UI port (default 8080, $STACK_PORT)")
            p.add_argument("--host", default=os.environ.get("STACK_HOST") or "127.0.0.1",
                           help="address the UI listens on (default 127.0.0.1: this machine only)")
            p.add_argument("--parallelism", type=int, default=4, help="LocalExecutor task slots (default 4)")
            p.add_argument("--settings", default=str(DEFAULT_SETTINGS), help="default: airflow_settings.yaml")
            p.add_argument("--no-schedule", action="store_true",
                           help="the scheduler creates no scheduled runs (manual and backfill runs still run)")
            p.add_argument("--timeout", type=float, default=float(os.environ.get("STACK_TIMEOUT") or 300),
                           help="seconds to wait for each Airflow component (default 300)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # `up` cleans up after itself when killed too
    try:
        return {"up": up, "stop": stop, "status": status}[args.command](args)
    except (StackError, stack_settings.SettingsError) as e:
        say(f"ERROR: {e}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
