# One image for every Airflow component (and `pipewright` itself): the project's locked
# environment, installed with `uv sync --frozen` exactly as `make env` installs it locally.
FROM python:3.11-slim-bookworm

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PATH=/opt/pipewright/.venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/pipewright/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PIPEWRIGHT_HOME=/data/pipewright

WORKDIR /opt/pipewright

# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --extra postgres --no-install-project

COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY schemas ./schemas
COPY dags ./dags
RUN uv sync --frozen --no-dev --extra postgres

# Airflow's conventional uid 50000, or any uid in group 0 (compose runs it as the host
# user, AIRFLOW_UID, so files in bind mounts belong to them): group 0 may write.
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home airflow \
    && mkdir -p /data/pipewright /data/serving /opt/airflow/logs /opt/airflow/auth \
    && chown -R 50000:0 /opt/airflow /data \
    && chmod -R g+rwX /opt/airflow /data
ENV HOME=/opt/airflow
USER 50000

ENTRYPOINT ["airflow"]
CMD ["version"]
