# syntax=docker/dockerfile:1
# The one image every Airflow component runs - api-server, scheduler, dag-processor, triggerer,
# Celery workers (docker-compose.yaml), or KubernetesExecutor pods through the official Helm
# chart (docs/deployment.md) - with this project baked in. The base tag follows requirements.txt's
# apache-airflow pin (tests/test_docker_compose.py checks it).
# Stage 1: the project as a wheel, with its native row writer (include/segments_to_lytics/fast_rows.c,
# ~3x faster shaping) compiled here, so the compilers stay out of the image Airflow runs. setup.py
# marks the extension optional; the check below makes a build without it fail loudly instead.
FROM apache/airflow:3.3.2-python3.11 AS wheel
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev zlib1g-dev \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
USER airflow
COPY --chown=airflow:0 pyproject.toml setup.py /opt/airflow/src/
COPY --chown=airflow:0 include /opt/airflow/src/include
COPY --chown=airflow:0 plugins /opt/airflow/src/plugins
RUN cd /opt/airflow/src \
    && pip wheel --no-cache-dir --no-deps -w /opt/airflow/wheels . \
    && python -c "import glob, sys, zipfile; names = zipfile.ZipFile(glob.glob('/opt/airflow/wheels/*.whl')[0]).namelist(); sys.exit(not any('/_fast_rows.' in n for n in names))"

# Stage 2: the image.
FROM apache/airflow:3.3.2-python3.11

USER root
# gnupg: PGP encryption/decryption (python-gnupg runs the gpg binary).
# openssh-client: ssh-keyscan/sftp, to look up and check the SFTP host key a connection pins.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gnupg openssh-client \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
USER airflow

# Production pins only; requirements-dev.txt (tests, lint, benchmarks, demo) stays out of the
# image. The file pins apache-airflow itself, so pip cannot move Airflow off the base version.
COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt

# The compose stack also needs what the base image brings and requirements.txt does not pin (the
# Celery executor, FAB auth manager, Postgres and Redis clients): fail here, not at start-up, if
# the pins above broke one of them.
RUN python -c "import airflow.providers.celery, airflow.providers.fab, airflow.providers.postgres, airflow.providers.redis, psycopg2, redis"

# The project: `include` (the core) and `braze_lytics` (the Airflow glue) become installed
# packages (the wheel of stage 1), the DAG files go into the DAGs folder. Baked in, not mounted:
# every container on every machine runs the same code; rebuild to change it.
COPY --from=wheel --chown=airflow:0 /opt/airflow/wheels /opt/airflow/wheels
RUN pip install --no-cache-dir --no-deps /opt/airflow/wheels/*.whl \
    && python -c "from include.segments_to_lytics._fast_rows import RowWriter" \
    && rm -rf /opt/airflow/wheels
COPY --chown=airflow:0 dags /opt/airflow/dags
# Airflow finds plugins in its plugins folder (or through an `airflow.plugins` entry point, which
# pyproject.toml does not declare): this one file hands it the installed package's plugin.
COPY --chown=airflow:0 <<'EOF' /opt/airflow/plugins/braze_lytics_plugin.py
"""The Braze <-> Lytics plugin from the installed `braze_lytics` package (see the Dockerfile)."""
import importlib.util

if importlib.util.find_spec("braze_lytics.plugin") is not None:
    from braze_lytics.plugin import *  # noqa: F401,F403 - Airflow picks up the AirflowPlugin subclass
EOF

# Mount points of the compose file's volumes: created here, so the named volumes start out
# owned by the airflow user. quarantine = BRAZE_LYTICS_QUARANTINE_DIR, work = BRAZE_LYTICS_WORK_DIR.
RUN mkdir -p /opt/airflow/quarantine /opt/airflow/work
