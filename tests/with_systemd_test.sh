#!/usr/bin/env bash
# with_systemd_test.sh SCRIPT: checks what every other test relies on scripts/with-systemd for (as root, on a
# machine whose PID 1 need not be systemd):
#   1. COMMAND reaches a manager at SDFUTURES_BUS; the manager's cgroup is a subtree of its own (never the root
#      cgroup) and PID 1 stays where it was; COMMAND's exit status comes back; nothing is left afterwards.
#   2. killed by SIGKILL together with all its descendants (what ctest does to a test that times out), it still
#      leaves no manager, no process and no cgroup directory behind.
set -uo pipefail
script=${1:?usage: with_systemd_test.sh PATH/TO/with-systemd}
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

hierarchies=()
while read -r _ mnt fstype opts _; do
  case $fstype in cgroup|cgroup2) ;; *) continue ;; esac
  [[ $fstype == cgroup && ,$opts, == *,cpuset,* ]] && continue
  hierarchies+=("$mnt")
done </proc/mounts

leftovers() { # $1: the script's pid; prints what of its private manager is still there
  local h
  for h in "${hierarchies[@]}"; do [[ -e $h/sdfutures-private-$1 ]] && echo "cgroup $h/sdfutures-private-$1"; done
  compgen -G "/tmp/sdfutures-private-$1.*" | sed 's/^/state directory /'
  [[ -n ${2:-} ]] && kill -0 "$2" 2>/dev/null && echo "manager process $2"
  true
}
wait_gone() { # $1: script pid, $2: manager pid; waits up to 20 s
  local _
  for _ in $(seq 200); do [[ -z $(leftovers "$1" "$2") ]] && return 0; sleep 0.1; done
  return 1
}
descendants() { local p; for p in $(ps -o pid= --ppid "$1"); do echo "$p"; descendants "$p"; done; }
pid1_cgroups=$(cat /proc/1/cgroup)

# 1. An ordinary run.
out=$(mktemp -d)
"$script" --private bash -c '
  busctl --address="$SDFUTURES_BUS" get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
    org.freedesktop.systemd1.Manager Version >"$1/version"
  m=$(cat /tmp/sdfutures-private-$PPID.*/manager.pid)
  echo "$m" >"$1/manager.pid"
  cat /proc/$m/cgroup >"$1/manager.cgroup"
  exit 7' _ "$out" &
wpid=$!
wait "$wpid"
status=$?
[[ $status == 7 ]] && pass "the command's exit status comes back" || fail "exit status $status, not 7"
grep -q '^s "' "$out/version" 2>/dev/null && pass "the manager answers: Version $(cat "$out/version")" ||
  fail "the manager did not answer Manager.Version"
manager=$(cat "$out/manager.pid" 2>/dev/null)
if [[ -s $out/manager.cgroup ]] &&
   ! grep -vE ":/sdfutures-private-$wpid/manager(/.*)?$" "$out/manager.cgroup" | grep -qv ':cpuset:'; then
  pass "the manager runs in its own subtree, /sdfutures-private-$wpid/manager, in every hierarchy but cpuset"
else
  fail "the manager's cgroups are not its own subtree:"; cat "$out/manager.cgroup" 2>/dev/null
fi
[[ $(cat /proc/1/cgroup) == "$pid1_cgroups" ]] && pass "PID 1 was not adopted" || fail "PID 1's cgroups changed"
left=$(leftovers "$wpid" "$manager")
[[ -z $left ]] && pass "nothing is left after an ordinary run" || fail "left after an ordinary run: $left"
rm -rf "$out"

# 2. Killed with all its descendants, as ctest kills a test that runs out of time.
"$script" --private sleep 300 &
wpid=$!
manager=""
# Until COMMAND runs: matched by its whole command line, since the script's own `sleep 0.05` while it waits for the
# manager is a child named sleep too (killing then could orphan a COMMAND forked right after the kill list was made).
for _ in $(seq 200); do
  manager=$(cat /tmp/sdfutures-private-$wpid.*/manager.pid 2>/dev/null) && [[ -n $manager ]] &&
    pgrep -P "$wpid" -f -x 'sleep 300' >/dev/null && break
  sleep 0.05
done
if [[ -z $manager ]]; then
  fail "the private manager of the second run did not start"
else
  victims=("$wpid" $(descendants "$wpid"))
  kill -KILL "${victims[@]}" 2>/dev/null
  wait "$wpid" 2>/dev/null
  if wait_gone "$wpid" "$manager"; then
    pass "SIGKILL of the script and its ${#victims[@]} processes: the watchdog tore everything down"
  else
    fail "after SIGKILL of the script and its descendants, left: $(leftovers "$wpid" "$manager" | tr '\n' ';')"
    # Clean up what this test itself caused, so one failure does not leak into the rest of the suite.
    for h in "${hierarchies[@]}"; do
      d=$h/sdfutures-private-$wpid
      [[ -d $d ]] || continue
      for p in $(find "$d" -name cgroup.procs -exec cat {} +); do kill -KILL "$p" 2>/dev/null; done
      sleep 0.2
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    rm -rf /tmp/sdfutures-private-$wpid.*
  fi
fi

[[ $failures == 0 ]] && echo "with_systemd_test: all passed" || echo "with_systemd_test: $failures failure(s)"
exit $((failures > 0))
