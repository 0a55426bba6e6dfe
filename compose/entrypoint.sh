#!/bin/sh
# The one entry point of the sandpit image: `entrypoint.sh ROLE` starts redis, postgres, the API or
# a worker, and `entrypoint.sh health-ROLE` is that service's health check. Secrets are read from
# the files Compose mounts under /run/secrets (never from the environment or the compose file), and
# the URLs built from them are handed to sandpit in its own environment only.
set -eu

secret() {  # the first line of /run/secrets/NAME, or a clear stop
    if [ ! -r "/run/secrets/$1" ]; then
        echo "sandpit: the secret $1 is missing (/run/secrets/$1): see compose/README.md" >&2
        exit 2
    fi
    head -n 1 "/run/secrets/$1" | tr -d '\r\n'
}

quoted() {  # a secret as it may stand in a URL
    python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"
}

service_env() {  # what the API and the workers are told
    secret postgres_password >/dev/null && secret redis_password >/dev/null  # a missing one stops here
    SANDPIT_DATABASE_URL="postgresql://sandpit:$(quoted "$(secret postgres_password)")@postgres:5432/sandpit"
    SANDPIT_REDIS_URL="redis://:$(quoted "$(secret redis_password)")@redis:6379/0"
    export SANDPIT_DATABASE_URL SANDPIT_REDIS_URL
}

role=${1:-}
case "$role" in
redis)
    umask 077
    printf 'bind 0.0.0.0\nport 6379\nprotected-mode no\ndir /var/lib/redis\nappendonly yes\nsave ""\nrequirepass %s\n' \
        "$(secret redis_password)" > /run/redis.conf
    chown redis:redis /run/redis.conf
    chown -R redis:redis /var/lib/redis
    exec runuser -u redis -- redis-server /run/redis.conf
    ;;
health-redis)
    REDISCLI_AUTH=$(secret redis_password) exec redis-cli -h 127.0.0.1 ping
    ;;
postgres)
    PGDATA=/var/lib/postgresql/data
    bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        secret postgres_password > /run/pgpass && chown postgres /run/pgpass && chmod 600 /run/pgpass
        runuser -u postgres -- "$bin/initdb" -D "$PGDATA" --username=sandpit --pwfile=/run/pgpass \
            --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
        rm -f /run/pgpass
        echo "CREATE DATABASE sandpit OWNER sandpit;" | \
            runuser -u postgres -- "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
        # clients come over the stack's internal network, with the password; the unix socket
        # (trust) is reached from inside this container only, by its health check
        echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    fi
    exec runuser -u postgres -- "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql
    ;;
health-postgres)
    exec runuser -u postgres -- pg_isready -q -h /run/postgresql -U sandpit -d sandpit
    ;;
api)
    service_env
    secret api_tokens >/dev/null
    SANDPIT_API_TOKENS=$(secret api_tokens)
    export SANDPIT_API_TOKENS
    exec python3 -m api --host 0.0.0.0 --port 8000
    ;;
health-api)
    exec python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=3)'
    ;;
worker)
    service_env
    # the loop device nodes the job-disk filesystem may be given (Docker's /dev has none; the
    # device cgroup lets block major 7 through, see docker-compose.yml)
    for n in $(seq 0 255); do
        [ -e "/dev/loop$n" ] || mknod -m 660 "/dev/loop$n" b 7 "$n"
    done
    # Docker hides parts of /proc by mounting over them (/proc/kcore, /proc/keys, ... and a
    # read-only /proc/sys). A job's own /proc, mounted in its user namespace, is allowed only where
    # the kernel sees a whole /proc ("mount_too_revealing"), and each job's network namespace has
    # sysctls of its own to set: the worker takes those mounts off (what `privileged` would do)
    awk '$5 ~ "^/proc/" { print $5 }' /proc/self/mountinfo | sort -r | while read -r point; do
        umount "$point"
    done
    # job images: those of a store given to seed from (an offline host: nothing is built), else
    # built here by mmdebstrap from Debian's mirror (an unchanged recipe is never built again)
    images="$SANDPIT_STATE_DIR/images"
    if [ -n "${SANDPIT_IMAGES_SEED:-}" ]; then
        if [ ! -e "$images/refs" ]; then
            mkdir -p "$images"
            cp -a "$SANDPIT_IMAGES_SEED/." "$images/"
        fi
    else
        sandpit images build --all
    fi
    # Docker mounts the container's own cgroups read-only; the worker makes its jobs' cgroups (and
    # their limits) beneath them, so every job stays inside the container's cgroup
    awk '$9 ~ "^cgroup" { print $5 }' /proc/self/mountinfo | while read -r point; do
        mount -o remount,bind,rw "$point"
    done
    sandpit host-prep  # last: it checks what jobs need, the images included
    exec sandpit worker
    ;;
health-worker)
    exec pgrep -f "sandpit worker" >/dev/null
    ;;
*)
    echo "usage: entrypoint.sh redis|postgres|api|worker (or health-ROLE)" >&2
    exit 2
    ;;
esac
