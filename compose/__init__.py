"""The Docker Compose stack and its Docker-free twin (`emotion-stream local`)."""
