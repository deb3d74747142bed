#!/bin/sh
# DEE's own login role and database (plan registry, send ledger), apart from Temporal's.
#
# The postgres image runs this from /docker-entrypoint-initdb.d once, when it initialises an
# empty data directory, as the superuser over the Unix socket. It may be sourced rather than
# run, so it sets no shell options and leaves psql's status as its own. DEE creates its
# tables itself (Alembic) the first time it connects, as the owner of the database.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set dee_password="${DEE_DB_PASSWORD:-dee}" <<'EOSQL'
CREATE ROLE dee LOGIN PASSWORD :'dee_password';
CREATE DATABASE dee OWNER dee;
EOSQL
