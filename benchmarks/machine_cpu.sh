#!/bin/bash
# Machine CPU seconds (user+system, all cores, from /proc/stat) and wall seconds over a command, e.g.
#   CI=true bash benchmarks/machine_cpu.sh bash .ci/run     (the suite-time figures in the notes)
read -r _ u n s i w q sq st _ < /proc/stat; b=$((u+n+s+q+sq)); t0=$(date +%s.%N)
"$@"; rc=$?
read -r _ u n s i w q sq st _ < /proc/stat; e=$((u+n+s+q+sq)); t1=$(date +%s.%N)
echo "CPU $(echo "($e-$b)/100" | bc -l | xargs printf '%.1f') s, wall $(echo "$t1-$t0" | bc -l | xargs printf '%.1f') s" >&2
exit $rc
