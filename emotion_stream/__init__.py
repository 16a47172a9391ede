"""emotion-stream: the project-level command and the shared model-repository layout."""
