#!/bin/sh
# /portcullis/service start|stop|restart: what systemd does with the
# installed portcullis-host.service in this dom0, which has no systemd: run
# its ExecStart (read from the unit file) in the background with stderr
# appended to /var/log/portcullis-host.log (the journal's stand-in), and, as
# Restart=on-failure says, start it again when it exits with an error.
UNIT=/lib/systemd/system/portcullis-host.service
LOG=/var/log/portcullis-host.log
PIDF=/run/portcullis-host.pid
SUP=/run/portcullis-host.supervisor
exec_start() { sed -n 's/^ExecStart=//p' "$UNIT" | head -1; }
umask_of() { sed -n 's/^UMask=//p' "$UNIT" | head -1; }
start() {
    cmd=$(exec_start)
    [ -n "$cmd" ] || { echo "service: no ExecStart= in $UNIT"; return 1; }
    (
        umask "$(umask_of || echo 0022)"
        while :; do
            $cmd >>"$LOG" 2>&1 &
            echo $! > "$PIDF"
            wait $!
            rc=$?
            echo "service: portcullis-host exited with status $rc" >> "$LOG"
            [ -e "$SUP.stop" ] && break
            [ $rc = 0 ] && break   # Restart=on-failure: a clean exit stays down
            sleep 1
        done
    ) &
    echo $! > "$SUP"
    echo "service: started portcullis-host: $cmd"
}
stop() {
    touch "$SUP.stop"
    pid=$(cat "$PIDF" 2>/dev/null)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    n=0
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    sup=$(cat "$SUP" 2>/dev/null)
    n=0
    while [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    rm -f "$SUP.stop" "$PIDF" "$SUP"
}
case "$1" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    *) echo "usage: $0 start|stop|restart"; exit 2 ;;
esac
