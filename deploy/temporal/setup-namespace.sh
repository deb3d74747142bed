#!/bin/sh
# Waits for the Temporal frontend, creates the namespace when it is missing, and adds the
# search attributes given as NAME=TYPE arguments, e.g. `DeePlanId=Keyword DeePlanVersion=Int`.
#
# Safe to run on every start: an existing namespace is left as it is, and adding a search
# attribute that exists with the same type changes nothing (a different type is an error).
set -eu

address="${TEMPORAL_ADDRESS:?TEMPORAL_ADDRESS is required}"
namespace="${TEMPORAL_NAMESPACE:-default}"
retention="${TEMPORAL_NAMESPACE_RETENTION:-30d}"
attempts="${SETUP_ATTEMPTS:-60}"

# retry COMMAND...: until it succeeds, at most $attempts times, 5 seconds apart.
retry() {
    attempt=1
    until "$@"; do
        if [ "$attempt" -ge "$attempts" ]; then
            echo "temporal-setup: giving up after $attempts attempts: $*" >&2
            return 1
        fi
        attempt=$((attempt + 1))
        sleep 5
    done
}

ensure_namespace() {
    temporal operator namespace describe --address "$address" --namespace "$namespace" \
        >/dev/null 2>&1 ||
        temporal operator namespace create --address "$address" --namespace "$namespace" \
            --retention "$retention"
}

# NAME=TYPE arguments become --name NAME --type TYPE pairs.
for pair in "$@"; do
    shift
    case "$pair" in
        ?*=?*) set -- "$@" --name "${pair%%=*}" --type "${pair#*=}" ;;
        *)
            echo "temporal-setup: expected NAME=TYPE, got '$pair'" >&2
            exit 2
            ;;
    esac
done

retry temporal operator cluster health --address "$address"
retry ensure_namespace
echo "temporal-setup: namespace $namespace is ready"
if [ "$#" -gt 0 ]; then
    # A new namespace takes a few seconds to reach every frontend: retried until it has.
    retry temporal operator search-attribute create --address "$address" \
        --namespace "$namespace" "$@"
    # For the log only.
    temporal operator search-attribute list --address "$address" --namespace "$namespace" ||
        true
fi
