# The Fargate task image: the db-backup package and PostgreSQL 17 client tools, which dump and
# restore servers 13 to 17 (a pg_dump is never older than the server it dumps), and the PostgreSQL 17
# server programs (initdb, pg_ctl, postgres) for restore drills' throwaway clusters.
# The task runs `db-backup ... --executor local`; the runner on GitHub passes that command.

FROM python:3.12-slim-trixie AS build
WORKDIR /src
COPY pyproject.toml ./
COPY runner/ runner/
# A virtualenv copies cleanly into the final stage, which then needs no build tools.
RUN python -m venv /opt/db-backup \
    && /opt/db-backup/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM python:3.12-slim-trixie
# Debian's postgresql-17 would create and start a cluster of its own on install; a drill makes a
# private one in a temporary folder instead (initdb as uid 10001, socket and data in that folder).
# Debian's archive keeps one version of each package per release, so pinning exact versions would
# only break rebuilds after security updates; the base image tag pins the release.
# hadolint ignore=DL3008
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/db-backup.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-17 postgresql-17 zstd ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/db-backup db-backup
COPY --from=build /opt/db-backup /opt/db-backup
# Only for tasks started by hand: the runner sends each task the targets.yaml entries of its job
# (DB_BACKUP_TARGETS_JSON), so a stale copy here never decides which database a job touches.
COPY targets.yaml /etc/db-backup/targets.yaml
ENV PATH=/opt/db-backup/bin:$PATH \
    DB_BACKUP_TARGETS=/etc/db-backup/targets.yaml \
    DB_BACKUP_PG_BINDIR=/usr/lib/postgresql/17/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/db-backup
ENTRYPOINT ["db-backup"]
CMD ["--help"]
