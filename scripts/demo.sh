#!/usr/bin/env bash
# The quick start's main job, on the embedded default: a local Temporal dev server (state in
# .dee/temporal.db), its Web UI, a local mail catcher (.dee/outbox/) and the worker, all from
# `dee dev`; then a plan created in the SQLite registry (.dee/dee.db) and one run through it.
#
#   scripts/demo.sh            # `make demo` runs this; Ctrl-C stops everything
#
# DEE_DEMO_EXIT=1 stops after the run instead of leaving `dee dev` up (the tests use it);
# DEE_DEMO_PORT, DEE_DEMO_UI_PORT, DEE_DEMO_SMTP_PORT and DEE_DEMO_API_PORT move the servers
# off 7233, 8233, 1025 and 8000.
# State goes under .dee/ in the working folder, as with `dee dev` itself.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEE="${DEE:-$ROOT/.venv/bin/dee}"
PORT="${DEE_DEMO_PORT:-7233}"
export TEMPORAL_ADDRESS="127.0.0.1:${PORT}"

"$DEE" dev --port "$PORT" --ui-port "${DEE_DEMO_UI_PORT:-8233}" \
    --smtp-port "${DEE_DEMO_SMTP_PORT:-1025}" --api-port "${DEE_DEMO_API_PORT:-8000}" &
DEV=$!
stop() { kill -INT "$DEV" 2>/dev/null || true; wait "$DEV" 2>/dev/null || true; }
trap stop EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 240); do
    if (echo >"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; then break; fi
    kill -0 "$DEV" 2>/dev/null || { echo "demo: dee dev exited" >&2; exit 1; }
    sleep 0.5
done

echo "demo: creating the plan"
"$DEE" plans create "$ROOT/examples/quick-plan.yaml"
RUN=$("$DEE" runs start quick-intro --run-id "quick-intro:demo-$(date +%s)" \
    --contact '{"email": "ana@example.com", "firstName": "Ana"}' --var product=DEE)
echo "demo: started run $RUN; the contact opens the intro email"
"$DEE" runs event "$RUN" open --step intro-email >/dev/null
echo "demo: waiting for the 20-second wait and the follow-up"
for _ in $(seq 1 120); do
    if "$DEE" runs show "$RUN" --json | grep -q '"status": "completed"'; then break; fi
    sleep 1
done
"$DEE" runs show "$RUN"
echo "demo: emails caught in .dee/outbox/:"
ls -1 .dee/outbox/
if [ "${DEE_DEMO_EXIT:-0}" = "1" ]; then exit 0; fi
echo "demo: DEE dev stays up: open the Web UI at http://127.0.0.1:${DEE_DEMO_UI_PORT:-8233}; Ctrl-C stops it"
wait "$DEV"
