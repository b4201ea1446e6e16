# Test stand-in for prom/alertmanager: Debian's alertmanager binary with its templates, and
# busybox's wget for the shipped health check.
FROM python:3.11-slim
COPY alertmanager /bin/alertmanager
COPY templates/ /usr/share/prometheus/alertmanager/
COPY busybox /bin/busybox
RUN ["/bin/busybox", "ln", "-s", "/bin/busybox", "/usr/local/bin/wget"]
EXPOSE 9093
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
