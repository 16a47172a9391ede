# Stand-in Python base (for python:3.11-slim-bookworm): Debian bookworm's python3, 3.11.
ARG BASE=emotion-stream/standin-debian:bookworm
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
