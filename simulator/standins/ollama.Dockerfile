# Test stand-in for ollama/ollama: simulator/fake_ollama.py behind an `ollama` command, so the
# shipped health check (`ollama list`) and `ollama pull` work as with the real image. The
# script imports its fake_ollama_* siblings from its own directory (no simulator package here).
FROM python:3.11-slim
COPY fake_ollama.py fake_ollama_http.py fake_ollama_cli.py fake_ollama_create.py /opt/model-fleet-sim/
COPY ollama /bin/ollama
ENV OLLAMA_HOST=0.0.0.0:11434 \
    OLLAMA_MODELS=/root/.ollama/models \
    PYTHONUNBUFFERED=1
EXPOSE 11434
ENTRYPOINT ["/bin/ollama"]
CMD ["serve"]
