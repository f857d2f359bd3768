#!/usr/bin/env bash
# A PostgreSQL 16 server for tansu's storage in long chaos runs, on a machine whose Debian has 15.
#
# tansu 0.6's PostgreSQL storage needs PostgreSQL 16 or later (its ListOffsets statement has a
# subquery in FROM without an alias), and its SQLite storage panics under the long runs (README,
# "Network faults on tansu 0.6"). This starts PostgreSQL 16 from PyPI's `pgserver` wheel (a
# relocatable build) as an unprivileged user, on a port the chaos harness does not restart, and
# makes a template database holding tansu's schema, which the harness copies for each run:
#
#   integration-tests/chaos-broker-pg.sh /path/to/tansu/etc/initdb.d/010-schema.sql
#   cargo run --release -p saga-integration-tests --bin chaos -- \
#       --broker-storage postgres://postgres@127.0.0.1:5433/tansu_template ...
#
# The schema is tansu's own file (its repository, tag v0.6.0), not carried here. The script's last
# line is the command that stops the server. Run again, it reuses the server and the template.
set -euo pipefail

schema="${1:?usage: $0 <tansu schema: etc/initdb.d/010-schema.sql> [port]}"
port="${2:-5433}"
# Outside /root: the server runs as another user, who must reach its binaries and data.
home="${SAGA_PG16_HOME:-/var/lib/saga-pg16}"
venv="$home/venv"
data="$home/data"
user=saga-pg

[ -r "$schema" ] || { echo "cannot read tansu's schema at $schema" >&2; exit 2; }
mkdir -p "$home"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import pgserver" 2>/dev/null || "$venv/bin/pip" install -q "pgserver==0.1.4"
bin=$("$venv/bin/python" -W ignore -c 'import pgserver, os; print(os.path.join(os.path.dirname(pgserver.__file__), "pginstall", "bin"))')
"$bin/postgres" --version

# PostgreSQL refuses to run as root.
id "$user" >/dev/null 2>&1 || useradd --system --no-create-home "$user"
chmod o+rX "$home"
if [ ! -s "$data/PG_VERSION" ]; then
  mkdir -p "$data" && chown "$user" "$data"
  su "$user" -s /bin/sh -c "'$bin/initdb' -D '$data' -U postgres --auth=trust" >/dev/null
fi
if ! "$bin/pg_isready" -h 127.0.0.1 -p "$port" -q; then
  su "$user" -s /bin/sh -c "'$bin/pg_ctl' -D '$data' -l '$data/log' -w -o '-p $port -c listen_addresses=127.0.0.1 -c ssl=off -c max_connections=200' start"
fi
psql="psql -h 127.0.0.1 -p $port -U postgres -v ON_ERROR_STOP=1 -q"
# Whatever answers on the port must be new enough for tansu (another server may hold it).
version=$($psql -d postgres -tAc "SHOW server_version_num")
[ "$version" -ge 160000 ] || { echo "the server on port $port is PostgreSQL $version; tansu needs 16 or later: pick another port" >&2; exit 2; }
if ! $psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'tansu_template'" | grep -q 1; then
  $psql -d postgres -c "CREATE DATABASE tansu_template"
fi
# Loaded in one transaction, and checked by a table of tansu's, so a failed load is redone.
if ! $psql -d tansu_template -tAc "SELECT 1 FROM pg_tables WHERE tablename = 'record'" | grep -q 1; then
  $psql -d tansu_template -1 -f "$schema"
fi
echo "tansu storage template: postgres://postgres@127.0.0.1:$port/tansu_template"
echo "stop: su $user -s /bin/sh -c \"'$bin/pg_ctl' -D '$data' stop\""
