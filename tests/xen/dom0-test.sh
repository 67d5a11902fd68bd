#!/bin/sh
# dom0 side of `cargo xtask boot`: creates our PVH guests from the
# repository's xen/*.cfg (installed at /etc/portcullis/xen) and waits for
# each one's ready line in its console log. Prints `TIME` and `RESULT`
# lines (the harness collects them); exit status 0 only if all passed.
CFG=/etc/portcullis/xen
ITEMS=/etc/portcullis/items
LOGS=/var/log/xen/console
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }'; }
failed=0
result() { # NAME PASS|FAIL DETAIL
    echo "RESULT $1: $2 $3"
    [ "$2" = PASS ] || failed=1
}

xl info | grep -E '^(xen_version|virt_caps|xen_commandline)'

# put_items NAME DOMID: every file in $ITEMS/NAME becomes the xenstore value
# /local/domain/DOMID/data/portcullis/<file>, byte for byte (\xNN escapes
# for xenstore-write), owned by dom0 and readable by that domain only.
put_items() {
    base=/local/domain/$2/data/portcullis
    [ -d "$ITEMS/$1" ] || return 0
    for f in "$ITEMS/$1"/*; do
        item=${f##*/}
        value=$(od -An -v -tx1 "$f" | tr -d ' \n' | sed 's/../\\x&/g')
        xenstore-write "$base/$item" "$value" || return 1
        echo "dom0: $1 (dom$2): wrote $item ($(wc -c < "$f") bytes)"
    done
    xenstore-chmod -r "$base" n0 "r$2"
}

# create NAME: `xl create -p` (paused) from the repository's cfg, then the
# configuration items. Sets T_<NAME> to the creation time.
create() {
    t=$(up)
    if ! xl create -p "$CFG/$1.cfg" > "/tmp/create-$1.log" 2>&1; then
        cat "/tmp/create-$1.log"
        result "$1" FAIL "(xl create failed)"
        return 1
    fi
    id=$(xl domid "$1")
    eval "T_$1=$t"
    echo "dom0: created $1 as dom$id (paused) in $(since "$t") s"
    put_items "$1" "$id" || { result "$1" FAIL "(writing its configuration items failed)"; return 1; }
}

# start NAME: unpauses it; sets U_<NAME> to the start time.
start() {
    eval "U_$1=$(up)"
    xl unpause "$1"
}

# wait_line NAME TEXT SECONDS: waits for TEXT in NAME's console log.
wait_line() {
    log=$LOGS/guest-$1.log
    eval "t=\$T_$1 u=\$U_$1"
    n=0
    while [ $n -lt $(($3 * 10)) ]; do
        if grep -qF "$2" "$log" 2>/dev/null; then
            echo "TIME $1: \"$2\" $(since "$u") s after xl unpause ($(since "$t") s after xl create -p)"
            return 0
        fi
        if [ $((n % 10)) -eq 9 ] && xl list "$1" 2>/dev/null | awk 'NR == 2 { exit !($5 ~ /[cs]/) }'; then
            echo "dom0: $1 stopped: $(xl list "$1" | awk 'NR == 2 { print $5 }')"
            break
        fi
        sleep 0.1
        n=$((n + 1))
    done
    echo "dom0: no \"$2\" from $1"
    return 1
}

show_log() {
    echo "--- console of $1:"
    sed 's/^/    | /' "$LOGS/guest-$1.log" 2>/dev/null
}

# 1. hello: hypercalls, console ring, shared info/PV clock, xenstore.
if create hello; then
    start hello
    if wait_line hello "hello: ready" 30; then
        id=$(xl domid hello)
        if grep -qE "hello: domain $id \"hello\", unix time [0-9]{10}" "$LOGS/guest-hello.log"; then
            result hello PASS "(domain id, name and time read under Xen)"
        else
            result hello FAIL "(ready, but no domain/name/time line)"
        fi
    else
        result hello FAIL "(no ready line)"
    fi
    show_log hello
    xl destroy hello 2>/dev/null
fi

# 2. The suite: all created paused first, so every name resolves; then
#    started in dependency order.
[ -n "$PORTCULLIS_ONLY_HELLO" ] && exit $failed
for g in entropyd cryptod policy_pd; do create $g; done
# Names: by default a domU may neither list /local/domain nor read another
# domain's name; the platform resolves names there, so the toolstack makes
# both readable (PORTCULLIS_NAME_PERMS=0 on the kernel command line skips
# this, to show the failure).
if [ "${PORTCULLIS_NAME_PERMS:-1}" = 1 ]; then
    xenstore-chmod /local/domain r0
    for g in entropyd cryptod policy_pd; do
        id=$(xl domid $g 2>/dev/null) && xenstore-chmod /local/domain/$id/name r0
    done
fi
xl list

start entropyd && wait_line entropyd "entropyd: ready" 30 \
    && result entropyd PASS "(ready)" || result entropyd FAIL ""
start cryptod && wait_line cryptod "cryptod: ready" 60 \
    && result cryptod PASS "(ready: seeded by entropyd over vchan)" || result cryptod FAIL ""
start policy_pd && wait_line policy_pd "policy_pd: applied rule" 60 \
    && result policy_pd PASS "(applied a rule with a token from cryptod)" || result policy_pd FAIL ""
sleep 1
for g in entropyd cryptod policy_pd; do show_log $g; done
xl list
echo "--- xl dmesg (guest lines):"
xl dmesg | grep -E '\(d[1-9]' | tail -40
exit $failed
