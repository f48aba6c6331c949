# taskfleet worker image: `celery -A taskfleet.app worker|beat|flower`.
# Runtime dependencies only (core + flower extra); runs as an unprivileged user. As uid 10001
# a CPU worker rejects sandbox.run jobs (namespace mode maps each run to host uids, which takes
# CAP_SETUID/CAP_SETGID): docker-compose.yml runs its cpu-worker as root with only SETUID,
# SETGID and KILL, its own seccomp profile and no privileged mode (README "Sandbox").
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TASKFLEET_CPU_POOL=prefork

# /home/taskfleet/metrics: the compose file's shared metrics volume is mounted there (a new
# named volume takes the owner of the folder it is mounted on).
RUN groupadd --system --gid 10001 taskfleet \
    && useradd --system --uid 10001 --gid taskfleet --create-home \
        --home-dir /home/taskfleet --shell /usr/sbin/nologin taskfleet \
    && install -d -o taskfleet -g taskfleet /home/taskfleet/metrics

# Install exactly the runtime dependencies uv.lock pins (hashes checked): the core and the
# flower extra (the compose file's flower service); no embedded, test or bench extras. Then
# the package itself (a regular, non-editable install); drop uv and the sources
# so only the installed package is importable.
WORKDIR /src
COPY requirements-uv.txt pyproject.toml uv.lock README.md ./
COPY taskfleet ./taskfleet
RUN pip install --require-hashes --no-deps -r requirements-uv.txt \
    && uv export --locked --extra flower --no-emit-project --no-header \
        --format requirements-txt \
        --output-file /tmp/runtime.txt \
    && pip install --require-hashes --no-deps -r /tmp/runtime.txt \
    && pip install --no-deps . \
    && pip uninstall --yes uv \
    && rm -rf /src /tmp/runtime.txt

WORKDIR /home/taskfleet
USER 10001:10001

# Healthy while the worker of the default command answers a ping (`taskfleet health
# --worker`; exit 3, broker unreachable, is folded into Docker's 1). Compose gives each service
# that runs another command its own check (or none: beat).
HEALTHCHECK --interval=30s --timeout=30s --start-period=30s --retries=3 \
    CMD taskfleet health --worker "cpu@$HOSTNAME" || exit 1

# Default: the CPU worker (same argv as taskfleet.workers.profiles.cpu_profile). Prefork in a
# container: no `taskfleet up` supervisor starts solo workers here, and the autoscaler resizes
# a prefork pool by remote control (TASKFLEET_CPU_POOL above; README "The CPU pool").
CMD ["celery", "-A", "taskfleet.app", "worker", "-P", "prefork", "-Q", "cpu", "-n", "cpu@%h", \
     "--prefetch-multiplier", "1", "-O", "fair", "-l", "INFO"]
