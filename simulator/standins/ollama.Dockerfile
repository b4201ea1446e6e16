# Test stand-in for ollama/ollama: simulator/fake_ollama.py behind an `ollama` command, so the
# shipped health check (`ollama list`) and `ollama pull` work as with the real image.
FROM python:3.11-slim
COPY fake_ollama.py /opt/model-fleet-sim/fake_ollama.py
COPY ollama /bin/ollama
ENV OLLAMA_HOST=0.0.0.0:11434 \
    OLLAMA_MODELS=/root/.ollama/models \
    PYTHONUNBUFFERED=1
EXPOSE 11434
ENTRYPOINT ["/bin/ollama"]
CMD ["serve"]
