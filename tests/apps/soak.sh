#!/usr/bin/env bash
# The ten-minute camera soak (tests/apps/test_camera.py) is mostly waiting, so `make test`
# runs it beside the other suites instead of after them:
#   soak.sh start PYTEST   launch it in the background (output in .apps/soak/log)
#   soak.sh wait           wait for it (bounded), print its output, exit with its status
#   soak.sh id             the test's node id (for --deselect)
set -u
cd "$(dirname "$0")/../.."
dir=.apps/soak
test=tests/apps/test_camera.py::test_camera_view_stays_live_for_ten_minutes
case "${1:-}" in
  start)
    mkdir -p "$dir" && rm -f "$dir/rc"
    ( "$2" -q -p no:cacheprovider "$test" > "$dir/log" 2>&1; echo $? > "$dir/rc" ) &
    echo $! > "$dir/pid"
    echo "camera soak started in the background (10 minutes; output: $dir/log)" ;;
  wait)
    for _ in $(seq 1 1500); do [ -f "$dir/rc" ] && break; sleep 1; done
    echo "----- camera soak ($test)"
    cat "$dir/log"
    if [ ! -f "$dir/rc" ]; then
      echo "camera soak: no result after 25 minutes; stopping it"
      pkill -TERM -P "$(cat "$dir/pid")" 2>/dev/null
      exit 1
    fi
    exit "$(cat "$dir/rc")" ;;
  id) echo "$test" ;;
  *) echo "usage: soak.sh start PYTEST | wait | id" >&2; exit 2 ;;
esac
