#!/bin/sh
# Creates Temporal's PostgreSQL databases and brings their schemas to the versions this
# admin-tools image ships, the way Temporal's compose files do (samples-server
# compose/scripts/setup-postgres.sh). Safe to run on every start: `create` passes over an
# existing database, `setup-schema -v 0.0` only adds the version tables, and
# `update-schema` applies only the versions not applied yet.
set -eu

: "${POSTGRES_SEEDS:?POSTGRES_SEEDS is required}"
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_PWD:?POSTGRES_PWD is required}"

# temporal-sql-tool reads its connection from these (the password stays off the command line).
export SQL_PLUGIN="${DB:-postgres12}"
export SQL_HOST="$POSTGRES_SEEDS"
export SQL_PORT="${DB_PORT:-5432}"
export SQL_USER="$POSTGRES_USER"
export SQL_PASSWORD="$POSTGRES_PWD"

schema_root=/etc/temporal/schema/postgresql/v12

setup() {  # setup DATABASE SCHEMA_DIR
    temporal-sql-tool --db "$1" create
    temporal-sql-tool --db "$1" setup-schema -v 0.0
    temporal-sql-tool --db "$1" update-schema -d "$2"
}

setup "${DBNAME:-temporal}" "$schema_root/temporal/versioned"
setup "${VISIBILITY_DBNAME:-temporal_visibility}" "$schema_root/visibility/versioned"
echo "temporal-schema: databases are up to date"
