"""docker-compose.yaml, Dockerfile and .env.example, checked for structure (no Docker engine here).

Variable interpolation is checked with a small re-implementation of Compose's rules (``$$``,
``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}``, ``${VAR?message}``): the
file is interpolated with and without the values .env would hold, and the result is inspected
the way Compose would see it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (REPO / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict] = COMPOSE["services"]
DOCKERFILE = (REPO / "Dockerfile").read_text()
ENV_EXAMPLE = (REPO / ".env.example").read_text()

AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker",
                    "airflow-triggerer", "airflow-init", "airflow-cli", "flower"}
ONE_SHOT = {"airflow-init", "object-store-init", "airflow-cli"}
SANDBOX = {"braze-sandbox", "lytics-sandbox", "sftp-sandbox"}
CORE = {"postgres", "redis", "object-store", "object-store-init", "airflow-init", "airflow-apiserver",
        "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker"}
REQUIRED = {"AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD",
            "POSTGRES_PASSWORD", "REDIS_PASSWORD", "OBJECT_STORE_ROOT_USER", "OBJECT_STORE_ROOT_PASSWORD",
            "STATE_STORE_ACCESS_KEY", "STATE_STORE_SECRET_KEY"}
# Environment names that hold a secret: their values must come from a ${...} variable.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY($|_)|TOKEN|AUTH$|^AIRFLOW_CONN_")


# --- Compose-style interpolation ------------------------------------------------------------------

REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}$]*))?\}|(?P<bad>.?))"
)


class MissingVariable(Exception):
    pass


def references(text: str) -> list[tuple[str, str | None, str]]:
    """Every ${...} in `text` as (name, operator, argument); a bare `$NAME` or `${...` is an error."""
    found = []
    for m in REFERENCE.finditer(text):
        if m["escaped"]:
            continue
        if m["name"] is None:
            line = text.count("\n", 0, m.start()) + 1
            raise AssertionError(f"line {line}: unescaped '$' ({text[m.start():m.start() + 20]!r}); "
                                 "write $$ for a shell variable, ${NAME...} for a Compose one")
        found.append((m["name"], m["op"], m["arg"] or ""))
    return found


def interpolate(text: str, env: dict[str, str]) -> str:
    def substitute(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name, op, arg = m["name"], m["op"], m["arg"] or ""
        assert name is not None, m.group(0)
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        if op == ":-" and not value:
            return arg
        if op == "-" and value is None:
            return arg
        return value or ""

    references(text)  # reject bare $NAME first
    return REFERENCE.sub(substitute, text)


def full_env() -> dict[str, str]:
    """Values like the ones docs/deployment.md generates (hex; the Fernet key url-safe base64)."""
    env = {name: f"{name.lower()}-0123456789abcdef" for name in REQUIRED}
    env["AIRFLOW_FERNET_KEY"] = "qN2vA5E3R8n1p0yXJ9mYV4b6wT7cK2hL0dS1fG3jH5k="
    env["OBJECT_STORE_ROOT_USER"] = "root-1a2b3c4d"
    env["STATE_STORE_ACCESS_KEY"] = "airflow-5e6f7a8b"
    return env


def resolved(env: dict[str, str] | None = None) -> dict:
    return yaml.safe_load(interpolate(COMPOSE_TEXT, full_env() if env is None else env))


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def is_reference(value: str) -> bool:
    return re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}$]*)?\}", value) is not None


def command_text(service: dict, key: str = "command") -> str:
    value = service.get(key) or ""
    return " ".join(value) if isinstance(value, list) else str(value)


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.splitlines():
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            values[m[1]] = m[2]
    return values


def pinned(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned")


# --- services and the shared Airflow definition ---------------------------------------------------

def test_the_stack_has_every_service():
    assert CORE | SANDBOX <= set(SERVICES), sorted(CORE | SANDBOX - set(SERVICES))
    assert AIRFLOW_SERVICES <= set(SERVICES)
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    assert SERVICES["redis"]["image"].startswith("redis:")
    commands = {name: command_text(SERVICES[name]) for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    assert commands["airflow-worker"] == "celery worker"
    assert commands["flower"] == "celery flower"
    # Optional extras stay out of a plain `docker compose up`.
    assert SERVICES["airflow-cli"]["profiles"] == ["debug"] and SERVICES["flower"]["profiles"] == ["flower"]
    assert not any("profiles" in SERVICES[name] for name in CORE)


def test_airflow_services_merge_the_common_anchor_and_run_celery():
    root = yaml.compose(COMPOSE_TEXT)
    top = {key.value: value for key, value in root.value}
    common_node = top["x-airflow-common"]
    services = {key.value: value for key, value in top["services"].value}
    for name in AIRFLOW_SERVICES:
        merges = [value for key, value in services[name].value if key.value == "<<"]
        assert merges and merges[0] is common_node, f"{name} does not start with <<: *airflow-common"

    common = COMPOSE["x-airflow-common"]
    assert common["build"] == "." and (REPO / "Dockerfile").is_file()
    assert COMPOSE_TEXT.count("AIRFLOW__CORE__EXECUTOR") == 1  # set once, in the anchor
    for name in AIRFLOW_SERVICES:
        service = SERVICES[name]
        assert service["image"] == common["image"] and service["build"] == "."
        assert environment(service)["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert environment(service)["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
            "http://airflow-apiserver:8080/execution/"
    env = environment(common)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres/airflow")
    assert env["AIRFLOW__CELERY__BROKER_URL"].endswith("@redis:6379/0")


def test_logging_stays_at_info_everywhere():
    assert environment(COMPOSE["x-airflow-common"])["AIRFLOW__LOGGING__LOGGING_LEVEL"] == "INFO"
    for name in AIRFLOW_SERVICES:
        assert environment(SERVICES[name])["AIRFLOW__LOGGING__LOGGING_LEVEL"] == "INFO", name
    for service in SERVICES.values():
        for key, value in environment(service).items():
            assert not (key.endswith("LOGGING_LEVEL") or key.endswith("_LOG_LEVEL")) or value == "INFO", key


# --- secrets ----------------------------------------------------------------------------------------

def test_secrets_come_only_from_variables():
    for name, service in SERVICES.items():
        for key, value in environment(service).items():
            if key == "AIRFLOW_CONN_BRAZE_LYTICS_STORE":  # JSON around two variables
                conn = json.loads(value)
                assert is_reference(conn["login"]) and is_reference(conn["password"]), conn
            elif SECRET_NAME.search(key):
                assert is_reference(value), f"{name}: {key}={value!r} is not a ${{...}} variable"
    redis = SERVICES["redis"]["command"]
    assert is_reference(redis[redis.index("--requirepass") + 1])
    # Every credential inside a URL is one of the .env values once interpolated.
    secrets = set(full_env().values())
    stack = resolved()
    for name, service in [("x-airflow-common", stack["x-airflow-common"]), *stack["services"].items()]:
        for key, value in environment(service).items():
            for url in re.findall(r"[a-z][a-z0-9+.]*://[^\s'\"]+", value):
                password = urlsplit(url).password
                assert password is None or password in secrets, f"{name}: {key} has a literal password"


def test_required_secrets_fail_clearly_when_missing():
    refs = references(COMPOSE_TEXT)
    required = {name for name, op, _ in refs if op in (":?", "?")}
    assert required == REQUIRED
    for name, op, message in refs:
        if name in REQUIRED:
            assert op == ":?" and ".env" in message, f"${{{name}{op}{message}}} must be ${{{name}:?... .env ...}}"
    # No .env at all, or one left empty: Compose stops before starting anything.
    with pytest.raises(MissingVariable, match="required variable .* is missing a value: set .* in .env"):
        interpolate(COMPOSE_TEXT, {})
    for name in sorted(REQUIRED):
        env = full_env()
        env[name] = ""
        with pytest.raises(MissingVariable, match=f"required variable {name} is missing"):
            interpolate(COMPOSE_TEXT, env)


def test_optional_variables_have_defaults():
    for name, op, _ in references(COMPOSE_TEXT):
        if name not in REQUIRED:
            assert op == ":-", f"${{{name}}} needs a default (${{{name}:-...}}): an empty .env value must work"


def test_the_jwt_secret_is_shared_by_the_token_signers_only():
    jwt = "AIRFLOW__API_AUTH__JWT_SECRET"
    assert jwt not in environment(COMPOSE["x-airflow-common"])
    signers = {name for name in AIRFLOW_SERVICES if jwt in environment(SERVICES[name])}
    assert signers == {"airflow-apiserver", "airflow-scheduler"}
    values = {environment(SERVICES[name])[jwt] for name in signers}
    assert len(values) == 1 and next(iter(values)).startswith("${AIRFLOW_JWT_SECRET:?")
    common = environment(COMPOSE["x-airflow-common"])
    assert common["AIRFLOW__CORE__FERNET_KEY"].startswith("${AIRFLOW_FERNET_KEY:?")
    assert common["AIRFLOW__API__SECRET_KEY"].startswith("${AIRFLOW_API_SECRET_KEY:?")


def test_a_filled_in_env_gives_a_consistent_stack():
    stack = resolved()
    env = environment(stack["x-airflow-common"])
    db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert (db.hostname, db.password) == ("postgres", full_env()["POSTGRES_PASSWORD"])
    assert environment(stack["services"]["postgres"])["POSTGRES_PASSWORD"] == db.password
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.password == full_env()["REDIS_PASSWORD"] == environment(stack["services"]["redis"])["REDISCLI_AUTH"]
    store = json.loads(env["AIRFLOW_CONN_BRAZE_LYTICS_STORE"])
    assert store["conn_type"] == "aws"
    assert (store["login"], store["password"]) == (full_env()["STATE_STORE_ACCESS_KEY"],
                                                   full_env()["STATE_STORE_SECRET_KEY"])
    assert urlsplit(store["extra"]["endpoint_url"]).hostname == "object-store"
    # Optional values left empty in .env fall back to their defaults.
    assert stack["services"]["airflow-worker"]["image"] == "braze-lytics-airflow:local"
    assert env["BRAZE_LYTICS_STATE_URL"] == "s3://braze_lytics_store@braze-lytics/state"
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "16"
    empty = resolved({**full_env(), **{k: "" for k in env_example() if k not in REQUIRED}})
    assert environment(empty["x-airflow-common"])["BRAZE_LYTICS_STATE_URL"] == "s3://braze_lytics_store@braze-lytics/state"


# --- health checks and start-up order ---------------------------------------------------------------

def test_every_long_running_service_has_a_health_check():
    expected = {
        "postgres": "pg_isready",
        "redis": "redis-cli ping",
        "object-store": "mc ready local",
        "airflow-apiserver": "http://localhost:8080/api/v2/version",
        "airflow-scheduler": "http://localhost:8974/health",
        "airflow-dag-processor": "airflow jobs check --job-type DagProcessorJob",
        "airflow-triggerer": "airflow jobs check --job-type TriggererJob",
        "airflow-worker": "celery_executor.app inspect ping",
        "flower": "http://localhost:5555/",
        "braze-sandbox": "8181",
        "lytics-sandbox": "8282",
        "sftp-sandbox": "2222",
    }
    assert set(expected) == set(SERVICES) - ONE_SHOT
    for name, probe in expected.items():
        check = SERVICES[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
        assert probe in " ".join(check["test"]), f"{name}: {check['test']}"
    for name in ONE_SHOT:
        assert "healthcheck" not in SERVICES[name] and "restart" not in SERVICES[name], name
    scheduler = environment(SERVICES["airflow-scheduler"])
    assert scheduler["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_depends_on_waits_for_health_and_completed_set_up():
    for name, service in SERVICES.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in SERVICES, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            if target in ONE_SHOT:
                assert condition == "service_completed_successfully", (name, target)
            else:
                assert condition == "service_healthy" and "healthcheck" in SERVICES[target], (name, target)
            # a plain `docker compose up` must not need a service of an inactive profile
            assert not SERVICES[target].get("profiles") or SERVICES[target]["profiles"] == service.get("profiles")

    def needs(name: str) -> dict[str, str]:
        return {t: s["condition"] for t, s in (SERVICES[name].get("depends_on") or {}).items()}

    for name in {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                 "airflow-worker", "flower"}:
        assert needs(name)["airflow-init"] == "service_completed_successfully", name
        assert needs(name)["postgres"] == needs(name)["redis"] == "service_healthy", name
    assert needs("airflow-worker")["airflow-apiserver"] == "service_healthy"
    assert needs("airflow-worker")["object-store-init"] == "service_completed_successfully"
    assert needs("airflow-init")["object-store-init"] == "service_completed_successfully"
    assert needs("object-store-init") == {"object-store": "service_healthy"}


# --- workers, volumes, the shared store ---------------------------------------------------------------

def test_at_least_two_celery_workers_share_the_quarantine_through_the_bucket():
    workers = [s for s in SERVICES.values() if command_text(s) == "celery worker" and not s.get("profiles")]
    assert sum(int((w.get("deploy") or {}).get("replicas", 1)) for w in workers) >= 2
    env = environment(COMPOSE["x-airflow-common"])
    # rejected rows go to the state bucket through the same connection: every worker and the API
    # server (which serves them in the run report) reach them; none stay on one worker's disk
    assert env["BRAZE_LYTICS_QUARANTINE_URL"] == "s3://braze_lytics_store@${STATE_BUCKET:-braze-lytics}/quarantine"
    assert "BRAZE_LYTICS_QUARANTINE_DIR" not in env
    work = env["BRAZE_LYTICS_WORK_DIR"]
    for worker in workers:
        assert environment(worker)["DUMB_INIT_SETSID"] == "0"
        mounts = {v.split(":")[1] if ":" in v else v: v.split(":")[0] for v in worker["volumes"]}
        assert mounts["/opt/airflow/logs"] == "airflow-logs"
        assert mounts[work] == work  # anonymous: scratch space per container


def test_volumes_exist_and_code_is_baked_into_the_image():
    for name, service in SERVICES.items():
        for volume in service.get("volumes") or []:
            parts = volume.split(":")
            if len(parts) == 1:
                continue  # anonymous volume
            source = parts[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in COMPOSE["volumes"], f"{name}: named volume {source} is not declared"
    for name in AIRFLOW_SERVICES:
        volumes = SERVICES[name]["volumes"]
        assert "airflow-logs:/opt/airflow/logs" in volumes, name
        assert not [v for v in volumes if v.startswith(".")], f"{name} mounts code; it is baked into the image"
    assert "postgres-db-volume:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "object-store-data:/data" in SERVICES["object-store"]["volumes"]


def test_the_state_store_lives_in_the_object_store():
    env = environment(COMPOSE["x-airflow-common"])
    bucket = "${STATE_BUCKET:-braze-lytics}"
    # the URL names the Airflow connection that holds the bucket's key and endpoint (no AWS_* defaults
    # that every other aws connection of the workers would silently pick up)
    assert env["BRAZE_LYTICS_STATE_URL"] == f"s3://braze_lytics_store@{bucket}/state"
    conn_text = env["AIRFLOW_CONN_BRAZE_LYTICS_STORE"]
    assert '"login": "${STATE_STORE_ACCESS_KEY:?' in conn_text and '"password": "${STATE_STORE_SECRET_KEY:?' in conn_text
    resolved_conn = json.loads(environment(resolved()["x-airflow-common"])["AIRFLOW_CONN_BRAZE_LYTICS_STORE"])
    endpoint = urlsplit(resolved_conn["extra"]["endpoint_url"])
    assert (endpoint.hostname, endpoint.port) == ("object-store", 9000)
    assert 9000 in SERVICES["object-store"]["expose"]
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FSSPEC_S3_ENDPOINT_URL"} & set(env)

    store = SERVICES["object-store"]
    assert "minio" in store["image"] and not store["image"].endswith((":latest", "minio"))
    assert store["command"][:2] == ["server", "/data"]
    init = SERVICES["object-store-init"]
    assert init["image"] == store["image"]
    script = command_text(init)
    assert "mc mb --ignore-existing" in script and "store/$${STATE_BUCKET}" in script
    assert "mc admin user add" in script and "mc admin policy attach" in script
    assert "http://object-store:9000" in script
    assert environment(init)["STATE_BUCKET"] == bucket
    # the same bucket the pipeline is told about, after interpolation too
    stack = resolved({**full_env(), "STATE_BUCKET": "acme-state"})
    assert environment(stack["x-airflow-common"])["BRAZE_LYTICS_STATE_URL"] == "s3://braze_lytics_store@acme-state/state"
    assert environment(stack["services"]["object-store-init"])["STATE_BUCKET"] == "acme-state"


# --- airflow-init --------------------------------------------------------------------------------------

def test_airflow_init_migrates_creates_the_admin_and_the_braze_api_pool():
    init = SERVICES["airflow-init"]
    env = environment(init)
    assert env["_AIRFLOW_DB_MIGRATE"] == "true" and env["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert env["_AIRFLOW_WWW_USER_PASSWORD"].startswith("${AIRFLOW_ADMIN_PASSWORD:?")
    script = command_text(init)
    assert "/entrypoint airflow version" in script
    assert 'airflow pools set braze_api "$${slots}"' in script
    # The pool gets the pipeline's delivery_concurrency: 4 with the shipped configuration.
    snippet = re.search(r"<<'PY'\n(.*?)\nPY\n", interpolate(init["command"][-1], {}), re.S)[1]
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=REPO,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "4", out.stderr


# --- sandbox profile -----------------------------------------------------------------------------------

def test_the_sandbox_is_an_optional_profile_serving_the_shipped_configuration():
    from sandbox.braze_cli import _parse_segment
    from sandbox.lytics_cli import _parse_audience

    for name in SANDBOX:
        service = SERVICES[name]
        assert service["profiles"] == ["sandbox"], name
        assert "./sandbox:/opt/airflow/sandbox:ro" in service["volumes"] and service["working_dir"] == "/opt/airflow"
    assert {n for n, s in SERVICES.items() if "sandbox" in (s.get("profiles") or [])} == SANDBOX
    braze, lytics = SERVICES["braze-sandbox"], SERVICES["lytics-sandbox"]
    assert braze["entrypoint"] == ["python", "-m", "sandbox.braze_server"]
    assert lytics["entrypoint"] == ["python", "-m", "sandbox.lytics_server"]
    assert "python -m sandbox.sftp_server" in command_text(SERVICES["sftp-sandbox"], "entrypoint")
    # Export links carry the sandbox's host: it must be a name the workers resolve.
    assert braze["command"][braze["command"].index("--host") + 1] == braze["hostname"] == "braze-sandbox"

    def values(service: dict, flag: str) -> list[str]:
        args = service["command"]
        return [args[i + 1] for i, a in enumerate(args) if a == flag]

    segments = {_parse_segment(v).segment_id for v in values(braze, "--segment")}
    audiences = {_parse_audience(v).id for v in values(lytics, "--audience")}
    config = yaml.safe_load((REPO / "include" / "config" / "braze_lytics.yaml").read_text())
    assert {s["segment_id"] for s in config["segments"]} <= segments
    assert {a["id"] for a in config["lytics_to_braze"]["audiences"]} <= audiences
    # Sandbox credentials are optional (no :? - Compose interpolates inactive profiles too).
    for service in (braze, lytics, SERVICES["sftp-sandbox"]):
        assert all(v.startswith("${") and ":-}" in v for v in environment(service).values())


# --- .env.example -------------------------------------------------------------------------------------

def test_env_example_documents_every_variable_without_secrets():
    documented = env_example()
    used = {name for name, _, _ in references(COMPOSE_TEXT)}
    assert used <= set(documented), f"not in .env.example: {sorted(used - set(documented))}"
    assert set(documented) <= used, f"in .env.example but unused: {sorted(set(documented) - used)}"
    for name in REQUIRED:
        assert documented[name] == "", f"{name} must be empty in .env.example (so a copy fails until filled)"
    for name, value in documented.items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example holds a value for {name}"
    for password in re.findall(r'"password": "([^"]*)"', ENV_EXAMPLE):
        assert password.startswith("<") and password.endswith(">"), password
    for example in re.findall(r"^# (AIRFLOW_CONN_[A-Z_]+)='(.*)'$", ENV_EXAMPLE, re.M):
        assert example[0] in documented and json.loads(example[1])["conn_type"]


# --- Dockerfile ---------------------------------------------------------------------------------------

def test_dockerfile_builds_the_pinned_airflow_with_production_requirements_only():
    instructions = [ln for ln in DOCKERFILE.splitlines() if ln and not ln.startswith("#")]
    froms = [ln for ln in instructions if ln.startswith("FROM ")]
    image = f"apache/airflow:{pinned('apache-airflow')}-python3.11"
    assert froms == [f"FROM {image} AS wheel", f"FROM {image}"]
    build, final = DOCKERFILE.split(f"\nFROM {image}\n")
    # Stage 1 compiles the project's wheel with its native row writer, and fails without it.
    assert "gcc" in build and "zlib1g-dev" in build and "pip wheel --no-cache-dir --no-deps -w /opt/airflow/wheels ." in build
    assert "_fast_rows." in build and "sys.exit(not any(" in build
    for source in ("pyproject.toml setup.py", "include", "plugins"):
        assert re.search(rf"^COPY --chown=airflow:0 {source} ", build, re.M), source
        assert all((REPO / s).exists() for s in source.split())
    # Stage 2, the image: no compilers, production pins, the wheel, the DAGs.
    apt = next(ln for ln in final.split("RUN ") if "apt-get install" in ln)
    assert "gnupg" in apt and "openssh-client" in apt and "rm -rf /var/lib/apt/lists/*" in apt and "gcc" not in apt
    assert "pip install --no-cache-dir -r /opt/airflow/requirements.txt" in final
    assert "COPY --chown=airflow:0 requirements.txt " in final
    assert "requirements-dev" not in "\n".join(instructions)  # mentioned in a comment only
    assert "COPY --from=wheel --chown=airflow:0 /opt/airflow/wheels /opt/airflow/wheels" in final
    assert "pip install --no-cache-dir --no-deps /opt/airflow/wheels/*.whl" in final
    assert "from include.segments_to_lytics._fast_rows import RowWriter" in final
    assert re.search(r"^COPY --chown=airflow:0 dags ", final, re.M) and (REPO / "dags").exists()
    assert re.search(r"^USER airflow$", DOCKERFILE, re.M) and instructions[-1].startswith("RUN mkdir")
    if (REPO / "plugins" / "braze_lytics" / "plugin.py").exists():
        assert 'from braze_lytics.plugin import *' in DOCKERFILE  # the UI plugin is loaded
