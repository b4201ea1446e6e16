# Test stand-in for prom/prometheus: Debian's prometheus binary, and busybox's wget for the
# shipped health check.
FROM python:3.11-slim
COPY prometheus /bin/prometheus
COPY busybox /bin/busybox
RUN ["/bin/busybox", "ln", "-s", "/bin/busybox", "/usr/local/bin/wget"]
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
