# The duomq operator image: the duomq-operator binary, built on the host, on a Debian
# bookworm base. Build it with images/build.sh (see --help), which puts just the binary
# into the build context. Runs as uid/gid 10001 and writes nothing, so the root
# filesystem can be read-only.

# Any Debian bookworm (glibc 2.36) image: build.sh passes the local duomq-base:bookworm.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

LABEL org.opencontainers.image.title="duomq-operator" \
      org.opencontainers.image.description="Kubernetes operator for duomq: turns BrokerGroups into live/backup broker groups and reports their failovers" \
      org.opencontainers.image.licenses="Apache-2.0"

# Plain passwd/group lines: a minbase image need not have adduser.
RUN echo 'duomq:x:10001:10001:duomq operator:/nonexistent:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'duomq:x:10001:' >>/etc/group

COPY duomq-operator /usr/local/bin/duomq-operator

USER 10001:10001
# Health probes and metrics.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/duomq-operator"]
CMD ["run"]
