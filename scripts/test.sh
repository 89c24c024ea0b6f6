#!/usr/bin/env bash
# `make test`: the whole suite, on the two cores of a small machine, in two processes side by side:
#
#   1. the unit tests and the labs under nbval (pytest tests notebooks, without the browser tests);
#   2. the browser phase (pytest tests/browser): every lab in JupyterLab in headless Chromium.
#
# Every lab runs with ECHO_TUTOR_SOLUTIONS=both: one execution is the learner's no-exercise run (each stub must
# say "not attempted yet") and the instructor's solved run (each solution checked and used). Each lab is executed
# once: by the browser phase where Chromium and Playwright are here (nbval then leaves those labs to it:
# tests/conftest.py), else by nbval. One OpenMP thread per process: two processes with two threads each on two
# cores spin-wait and crawl. The browser phase's log is printed when it ends; the exit status is the worse one.
#
# Usage: scripts/test.sh [PYTHON] (default .venv/bin/python); BROWSER_LABS / BROWSER_CONTROLS / BROWSER_CELLS as in
# the Makefile.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
export ECHO_TUTOR_SOLUTIONS=both
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
t0=$(date +%s)

bpid=""
if "$PY" -c 'import sys; sys.path.insert(0, "tests"); from browser_env import browser_can_run; sys.exit(not browser_can_run())'; then
    blog=$(mktemp -t echo_tutor_browser.XXXXXX)
    ECHO_TUTOR_BROWSER_LABS=${BROWSER_LABS:-} ECHO_TUTOR_BROWSER_CONTROLS=${BROWSER_CONTROLS:-1} \
        ECHO_TUTOR_BROWSER_CELLS=${BROWSER_CELLS:-2} \
        "$PY" -m pytest tests/browser -v -p no:cacheprovider --durations=10 >"$blog" 2>&1 &
    bpid=$!
    export ECHO_TUTOR_BROWSER_BESIDE=1
    echo "[make test] browser phase started beside the unit tests (pid $bpid, log $blog)"
else
    echo "[make test] no Chromium/Playwright here: nbval runs every lab (the browser phase skips)"
fi

"$PY" -m pytest tests notebooks -m "not browser" --nbval-lax --nbval-current-env -p no:cacheprovider --durations=20
rc=$?
echo "[make test] unit tests and nbval: exit $rc after $(( $(date +%s) - t0 )) s"

if [ -n "$bpid" ]; then
    wait "$bpid"
    brc=$?
    echo "================================ browser phase (exit $brc) ================================"
    cat "$blog"
    rm -f "$blog"
    [ "$brc" -gt "$rc" ] && rc=$brc
fi
echo "[make test] done: exit $rc after $(( $(date +%s) - t0 )) s"
exit "$rc"
