#!/bin/sh
# Entrypoint for the official postgres image, for the compose and Kubernetes
# examples. A replica without data first copies the primary with
# pg_basebackup -R, through the writer VIP (PG_PRIMARY_HOST): it then streams
# from whichever node holds the VIP, and follows a failover by itself.
#   PG_BOOTSTRAP    primary | replica; unset: primary for the StatefulSet pod
#                   whose name (POD_NAME) ends in -0, replica for the others
#   PG_PRIMARY_HOST where a replica copies and streams from (the writer VIP)
# Promotion is not done here, nor by dbvip: promote by hand or pair with
# Patroni. Nor is an old primary turned into a replica: after a failover,
# re-make it (empty its data) before it starts again, or it starts as a second
# primary (dbvip keeps the VIP on the newer timeline, but writes diverge).
set -eu

bootstrap="${PG_BOOTSTRAP:-}"
if [ -z "$bootstrap" ]; then
  case "${POD_NAME:-}" in
    *-0) bootstrap=primary ;;
    *) bootstrap=replica ;;
  esac
fi

if [ "$bootstrap" = replica ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${PG_PRIMARY_HOST:?a replica needs PG_PRIMARY_HOST (the writer VIP)}"
  as_postgres=""
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    as_postgres="gosu postgres"
  fi
  until pg_isready -q -h "$PG_PRIMARY_HOST" -p 5432; do
    echo "pg-start: waiting for the primary at $PG_PRIMARY_HOST"
    sleep 2
  done
  PGPASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
  export PGPASSWORD
  $as_postgres pg_basebackup -h "$PG_PRIMARY_HOST" -U postgres -D "$PGDATA" -R -X stream -c fast
  unset PGPASSWORD
  chmod 0700 "$PGDATA"
fi

exec docker-entrypoint.sh postgres
