#!/bin/sh
# Runs once, when the official postgres image creates the primary's data
# (/docker-entrypoint-initdb.d/). Creates dbvip's login, which needs no more
# than pg_monitor for its role probe, and lets replicas connect for
# replication (the image's pg_hba.conf allows that from loopback only).
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v dbvip_password="$(cat "$DBVIP_ROLE_PASSWORD_FILE")" <<'SQL'
CREATE ROLE dbvip LOGIN PASSWORD :'dbvip_password';
GRANT pg_monitor TO dbvip;
SQL

echo "host replication postgres all scram-sha-256" >>"$PGDATA/pg_hba.conf"
