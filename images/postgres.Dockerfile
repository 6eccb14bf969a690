# PostgreSQL 15 for duomq's end-to-end tests of the shared-database mode: Debian bookworm's
# postgresql-15 on the local base image, no registry needed. Build it with
# images/build-postgres.sh. The entrypoint follows the official postgres image's contract
# (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA; port 5432), so a cluster that can
# pull that image may use it instead.

# Any Debian bookworm image: build-postgres.sh passes the local duomq-base:bookworm.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

LABEL org.opencontainers.image.title="duomq-postgres" \
      org.opencontainers.image.description="PostgreSQL 15 (Debian bookworm) for duomq's shared-database end-to-end tests" \
      org.opencontainers.image.licenses="Apache-2.0"

# Only the server binaries: postgresql-common must not create its default cluster (the
# entrypoint runs initdb on first start, in PGDATA).
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/duomq.conf \
 && apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-15 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql

COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint

ENV PGDATA=/var/lib/postgresql/data/pgdata
VOLUME ["/var/lib/postgresql/data"]
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
