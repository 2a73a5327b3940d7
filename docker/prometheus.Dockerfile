# Prometheus for the compose fleet: Debian's `prometheus` package on the locally made base
# (docker/base.sh), scraping the cloud and the edges with docker/prometheus.yml.
#
#   docker build -f docker/prometheus.Dockerfile --build-arg BASE_IMAGE=cema-base:bookworm -t cema-prometheus .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# policy-rc.d keeps the package's postinst from starting a daemon inside the build.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* /usr/sbin/policy-rc.d
COPY docker/prometheus.yml /etc/cema/prometheus.yml
USER prometheus
EXPOSE 9090
VOLUME /var/lib/prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/cema/prometheus.yml", "--storage.tsdb.path=/var/lib/prometheus/metrics2", \
     "--storage.tsdb.retention.time=7d", "--web.listen-address=:9090"]
