# The duomq broker image: the duomq-broker binary, built on the host, on a Debian
# bookworm base. Build it with images/build.sh (see --help), which puts just the binary
# into the build context. Runs as uid/gid 10001 and works with a read-only root
# filesystem: the broker writes only to its data dir, /var/lib/duomq.

# Any Debian bookworm (glibc 2.36) image: build.sh passes the local duomq-base:bookworm.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

LABEL org.opencontainers.image.title="duomq-broker" \
      org.opencontainers.image.description="duomq's message broker: durable STOMP 1.2 queues and topics, live/backup replication" \
      org.opencontainers.image.licenses="Apache-2.0"

# Plain passwd/group lines: a minbase image need not have adduser. The data dir belongs to
# the broker's user, so a fresh volume mounted there (which takes over the directory's
# owner) is writable.
RUN echo 'duomq:x:10001:10001:duomq broker:/var/lib/duomq:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'duomq:x:10001:' >>/etc/group \
 && mkdir -p /var/lib/duomq \
 && chown 10001:10001 /var/lib/duomq \
 && chmod 0750 /var/lib/duomq

COPY duomq-broker /usr/local/bin/duomq-broker

VOLUME ["/var/lib/duomq"]
USER 10001:10001
# STOMP, cluster (replication and votes), admin HTTP.
EXPOSE 61613 61616 8161
ENTRYPOINT ["/usr/local/bin/duomq-broker"]
# Without arguments: listen on all interfaces (the built-in defaults are loopback only,
# which nothing outside the container reaches) and keep the journal in the volume.
# These are flags, not DUOMQ_* variables, on purpose: arguments replace CMD (Kubernetes
# `args` do too), so `run --config FILE` gets exactly what FILE says, whereas variables
# baked into the image would silently override FILE (they take precedence over it).
CMD ["run", "--stomp-listen", "0.0.0.0:61613", "--admin-listen", "0.0.0.0:8161", "--data-dir", "/var/lib/duomq"]
