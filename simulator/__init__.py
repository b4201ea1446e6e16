"""Stand-ins for what this machine lacks (a GPU, Ollama): for tests, demo and benchmarks."""
