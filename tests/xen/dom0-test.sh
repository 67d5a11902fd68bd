#!/bin/sh
# dom0 side of `cargo xtask boot`: creates our PVH guests from the
# repository's xen/*.cfg (installed at /etc/portcullis/xen) and waits for
# each one's ready line in its console log; then talks to them from dom0
# through Xen's own libxenvchan (vchan-socket-proxy + `portcullis`): keyset
# and revocation list, the unlock (codes typed into the unlocker's console,
# cryptsetup open), a client destroyed and created again, and the audit log
# collected and verified. Prints `STAGE`, `TIME` and `RESULT` lines (the
# harness collects them); exit status 0 only if all passed.
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
SUITE="entropyd cryptod policy_pd unlocker"
echo "STAGE suite: xl create -p"
for g in $SUITE; do create $g; done
# Names: by default a domU may neither list /local/domain nor read another
# domain's name; the platform resolves names there, so the toolstack makes
# both readable (PORTCULLIS_NAME_PERMS=0 on the kernel command line skips
# this, to show the failure).
name_perms() {
    [ "${PORTCULLIS_NAME_PERMS:-1}" = 1 ] || return 0
    xenstore-chmod /local/domain r0
    for g in "$@"; do
        id=$(xl domid $g 2>/dev/null) && xenstore-chmod /local/domain/$id/name r0
    done
}
name_perms $SUITE
xl list
CRYPTOD=$(xl domid cryptod)
UNLOCKER=$(xl domid unlocker)

# keep_state NAME: the toolstack's half of Platform::persist on Xen. NAME
# writes its resealed state to .../data/portcullis-persist/sealed-state in
# its own xenstore directory; on every change dom0 copies it (atomically, by
# rename) to /var/lib/portcullis/NAME.sealed-state, which becomes NAME's
# sealed-state item when it is created again.
keep_state() {
    node=/local/domain/$(xl domid $1)/data/portcullis-persist/sealed-state
    out=/var/lib/portcullis/$1.sealed-state
    xenstore-watch "$node" 2>/dev/null | while read -r _; do
        xenstore-read -R "$node" > "$out.tmp" 2>/dev/null && [ -s "$out.tmp" ] && mv "$out.tmp" "$out"
    done &
}
keep_state cryptod

# dom0's side of the vchans is Xen's own libxenvchan, through
# vchan-socket-proxy; our `portcullis` tool talks to the proxy's socket.
ROOT=/etc/portcullis/root.pub
RUN=/run/portcullis
VOL=/var/lib/portcullis/data.luks
AUDIT=/var/lib/portcullis/audit.log
mkdir -p $RUN /run/cryptsetup
export DM_DISABLE_UDEV=1   # no udev in this dom0: libdevmapper makes the nodes
# proxy CLIENT-OR-SERVER DOMID PORT-PATH SOCKET NAME: runs one
# vchan-socket-proxy in the background, its stderr in $RUN/proxy-NAME.err.
proxy() {
    vchan-socket-proxy --mode=$1 "$2" "$3" "$4" 2> "$RUN/proxy-$5.err" &
    echo "dom0: vchan-socket-proxy --mode=$1 $2 $3 $4 (pid $!)"
}
# wait_file FILE TEXT SECONDS [COUNT]: waits for COUNT (default 1) lines
# holding TEXT in FILE.
wait_file() {
    n=0
    while [ $n -lt $(($3 * 10)) ]; do
        [ "$(grep -cF "$2" "$1" 2>/dev/null)" -ge "${4:-1}" ] && return 0
        sleep 0.1
        n=$((n + 1))
    done
    echo "dom0: no \"$2\" (x${4:-1}) in $1"
    return 1
}

# The audit collector, a libxenvchan client of cryptod's audit port.
proxy client $CRYPTOD /local/domain/$CRYPTOD/data/vchan/0/9005 $RUN/audit.sock audit
AUDIT_PROXY=$!
portcullis audit-collect --socket $RUN/audit.sock --out $AUDIT > $RUN/collector.log 2>&1 &
COLLECTOR=$!

echo "STAGE suite: xl unpause"
start entropyd && wait_line entropyd "entropyd: ready" 30 \
    && result entropyd PASS "(ready)" || result entropyd FAIL ""
start cryptod && wait_line cryptod "cryptod: ready" 60 \
    && result cryptod PASS "(ready: seeded by entropyd over vchan)" || result cryptod FAIL ""
start policy_pd && wait_line policy_pd "policy_pd: applied rule" 60 \
    && result policy_pd PASS "(applied a rule with a token from cryptod)" || result policy_pd FAIL ""

# Without a running suite the rest can only time out: stop here.
if [ $failed != 0 ]; then
    for g in $SUITE; do show_log $g; done
    echo "dom0: the suite did not start; skipping the vchan, unlock and failure checks"
    exit 1
fi

# 3. dom0 as a libxenvchan CLIENT of cryptod (port 9001): a real keyset_req,
#    the answer checked against root.pub.
echo "STAGE vchan interop: dom0 client of cryptod"
proxy client $CRYPTOD /local/domain/$CRYPTOD/data/vchan/0/9001 $RUN/cryptod.sock cryptod
t=$(up)
for req in keyset revocations; do
    if portcullis vchan-call --socket $RUN/cryptod.sock --root $ROOT --request $req > $RUN/call-$req.out 2>&1; then
        echo "TIME vchan-call $req: $(since "$t") s"
        result "vchan-$req" PASS "($(cat $RUN/call-$req.out))"
    else
        result "vchan-$req" FAIL "($(cat $RUN/call-$req.out))"
    fi
    t=$(up)
done
sleep 0.5   # cryptod notices the proxy left and listens again

# 4. The unlock: the agent in dom0 behind a proxy that is the libxenvchan
#    SERVER for the unlocker (port 9003); the operator's codes, made by
#    oathtool from the provisioned secret, typed into the unlocker's console.
echo "STAGE unlock: agent and unlocker"
portcullis unlock-agent --socket $RUN/agent.sock --cryptod-socket $RUN/cryptod.sock \
    --root $ROOT --volume data=$VOL > $RUN/agent.log 2>&1 &
wait_file $RUN/agent.log "unlock-agent: ready" 30 || cat $RUN/agent.log
proxy server $UNLOCKER /local/domain/0/data/vchan/$UNLOCKER/9003 $RUN/agent.sock agent
ULOG=$LOGS/guest-unlocker.log
TTY=$(xenstore-read /local/domain/$UNLOCKER/console/tty)
SECRET=$(sed -n 's/.*[?&]secret=\([A-Z2-7]*\).*/\1/p' /etc/portcullis/operator.otpauth)
echo "dom0: unlocker console is $TTY"
# type N CODE: waits for the N-th prompt, then types CODE and Enter on the
# unlocker's console pty (what `xl console unlocker` would send).
type_code() {
    wait_file "$ULOG" "TOTP code for operator:" 30 "$1" || return 1
    printf '%s\r' "$2" > "$TTY"
}
start unlocker
wait_line unlocker "unlocker: ready" 60 || result unlocker FAIL "(not ready)"
code=$(oathtool --totp -b "$SECRET")
wrong=$(echo "$code" | awk '{ printf "%06d", ($1 + 1) % 1000000 }')
# a) a wrong code: cryptod refuses it
type_code 1 "$wrong" && wait_file "$ULOG" "unlocker: refused" 30 \
    && result unlock-wrong-code PASS "($(grep "unlocker: refused" "$ULOG" | head -1))" \
    || result unlock-wrong-code FAIL ""
# b) the right code while the volume is not yet in place: cryptod accepts,
#    the unlock request crosses libxenvchan into dom0, the agent's
#    cryptsetup fails and says so back over the same path
t=$(up)
if type_code 2 "$code" && wait_file "$ULOG" "unlocker: agent refused" 45; then
    result vchan-agent PASS "(unlock_request/unlock_result across vchan-socket-proxy: $(grep "unlocker: agent refused" "$ULOG" | cut -c1-90))"
else
    result vchan-agent FAIL ""
    show_log unlocker
    echo "--- agent:"; cat $RUN/agent.log
    echo "--- proxy (server for the unlocker):"; cat $RUN/proxy-agent.err
    xenstore-ls -p /local/domain/0/data
    xenstore-read /local/domain/0/domid
fi
echo "TIME unlock attempt with the agent: $(since "$t") s"
gunzip -c $VOL.gz > $VOL
# c) the same code again: a replay, refused by cryptod
type_code 3 "$code" && wait_file "$ULOG" "unlocker: refused" 30 2 \
    && grep "unlocker: refused" "$ULOG" | tail -1 | grep -q replay \
    && result unlock-replay PASS "($(grep "unlocker: refused" "$ULOG" | tail -1))" \
    || result unlock-replay FAIL "($(grep "unlocker: refused" "$ULOG" | tail -1))"
# d) the next step's code: the volume opens for real
next=$(oathtool --totp -b -N "now + 30 seconds" "$SECRET")
t=$(up)
if type_code 4 "$next" && wait_file "$ULOG" "unlocker: volume data unlocked" 60 \
    && [ -b /dev/mapper/portcullis-data ] && cryptsetup status portcullis-data > $RUN/status 2>&1; then
    echo "TIME unlock (code typed to unlocked): $(since "$t") s"
    result unlock PASS "(cryptsetup open: $(grep -E 'type|cipher' $RUN/status | tr -s ' ' | tr '\n' ' '))"
else
    result unlock FAIL "($(tail -3 $RUN/agent.log | tr '\n' ' '))"
    echo "--- proxy (server for the unlocker), without data lines:"
    grep -av -e '^from-' $RUN/proxy-agent.err | tail -20
    xenstore-ls -p /local/domain/0/data
fi
if grep -qF -e "$code" -e "$next" -e "$wrong" "$ULOG"; then
    result unlocker-no-echo FAIL "(a typed code appears on the console)"
else
    result unlocker-no-echo PASS "(no typed code on the console)"
fi
echo "--- unlock agent:"; sed 's/^/    | /' $RUN/agent.log

# 5. A client destroyed mid-flow and created again: it gets a new domain
#    id, so cryptod must serve the new id (it resolves client names again
#    every 2 s). policy_pd is destroyed while its self-test waits, its vchan
#    to cryptod open.
echo "STAGE failure: xl destroy policy_pd mid-flow, xl create again"
old_id=$(xl domid policy_pd 2>/dev/null)
wait_line policy_pd "waiting" 30 >/dev/null
xl destroy policy_pd
mv "$LOGS/guest-policy_pd.log" "$LOGS/guest-policy_pd.1.log" 2>/dev/null
if create policy_pd; then
    id=$(xl domid policy_pd)
    # the recreated one need not wait 32 s for its expiry check
    xenstore-write /local/domain/$id/data/portcullis/settings 'selftest=1\x0askew=3\x0a'
    name_perms policy_pd
    # Started at once: until cryptod serves the new id, policy_pd's vchan
    # client reads "permission denied" under cryptod's directory, which
    # means "not published yet", and waits.
    start policy_pd
    n=0
    while ! xenstore-exists /local/domain/$CRYPTOD/data/vchan/$id/9001 2>/dev/null && [ $n -lt 100 ]; do
        sleep 0.1; n=$((n + 1))
    done
    echo "TIME cryptod serves the new dom$id: $(since "$T_policy_pd") s after xl create -p"
    if wait_line policy_pd "policy_pd: applied rule" 30 && wait_line policy_pd "selftest done, 0 failed" 30; then
        result policy_pd-recreated PASS "(dom$old_id destroyed mid-flow; as dom$id it got a fresh token, applied its rule, and its self-test passed)"
    else
        result policy_pd-recreated FAIL "(dom$old_id destroyed; recreated as dom$id)"
    fi
fi
grep -F "serving the new domain" "$LOGS/guest-cryptod.log"
xl list cryptod 2>/dev/null | awk 'NR == 2 { exit ($5 ~ /[cs]/) }' \
    && result cryptod-survives PASS "(still running after a client was destroyed)" \
    || result cryptod-survives FAIL "($(tail -2 "$LOGS/guest-cryptod.log" | tr '\r\n' '  '))"

# 6. cryptod destroyed and created again from the state it persisted: the
#    code it accepted last (step 4d, still inside its validity window) must
#    be refused as a replay by the new cryptod. entropyd follows cryptod's
#    name to the new domain id and seeds it; a new unlocker types the code.
echo "STAGE failure: xl destroy cryptod, xl create again from its persisted state"
STATE=/var/lib/portcullis/cryptod.sealed-state
if [ -s $STATE ] && ! cmp -s $STATE $ITEMS/cryptod/sealed-state; then
    echo "dom0: cryptod persisted $(wc -c < $STATE) bytes of resealed state through xenstore"
    old_c=$CRYPTOD
    xl destroy cryptod
    xl destroy unlocker 2>/dev/null   # it powered off after unlocking; make sure
    mv "$LOGS/guest-cryptod.log" "$LOGS/guest-cryptod.1.log" 2>/dev/null
    mv "$LOGS/guest-unlocker.log" "$LOGS/guest-unlocker.1.log" 2>/dev/null
    # (PORTCULLIS_KEEP_STATE=0 on the kernel command line gives the new
    # cryptod the provisioned state instead, to show the failure.)
    [ "${PORTCULLIS_KEEP_STATE:-1}" = 1 ] && cp $STATE $ITEMS/cryptod/sealed-state
    # cryptod resolves its clients' names when it starts: the unlocker first
    create unlocker && create cryptod
    name_perms cryptod unlocker
    CRYPTOD=$(xl domid cryptod)
    keep_state cryptod
    # the collector's libxenvchan client was bound to the old domain
    kill $AUDIT_PROXY 2>/dev/null
    rm -f $RUN/audit.sock
    proxy client $CRYPTOD /local/domain/$CRYPTOD/data/vchan/0/9005 $RUN/audit.sock audit2
    AUDIT_PROXY=$!
    ULOG=$LOGS/guest-unlocker.log
    TTY=$(xenstore-read /local/domain/$(xl domid unlocker)/console/tty)
    start cryptod
    if wait_line cryptod "cryptod: ready" 60 && start unlocker && wait_line unlocker "unlocker: ready" 60 \
        && type_code 1 "$next" && wait_file "$ULOG" "unlocker: refused" 30; then
        if grep "unlocker: refused" "$ULOG" | tail -1 | grep -q replay; then
            result cryptod-restart-replay PASS "(dom$old_c destroyed, dom$CRYPTOD created from the persisted state: $(grep "unlocker: refused" "$ULOG" | tail -1))"
        else
            result cryptod-restart-replay FAIL "($(grep "unlocker: refused" "$ULOG" | tail -1))"
        fi
    else
        result cryptod-restart-replay FAIL "(the new cryptod or unlocker did not answer)"
    fi
    grep -F "is now dom" "$LOGS/guest-entropyd.log"
    xl destroy unlocker 2>/dev/null
else
    result cryptod-restart-replay FAIL "(cryptod persisted no new state through xenstore)"
fi

# 7. The audit trail, collected in dom0 over vchan, verified in dom0.
echo "STAGE audit: verify in dom0"
wait_line cryptod "audit outbox empty; collector acknowledged" 30
acked=$(grep "collector acknowledged seq" "$LOGS/guest-cryptod.log" | tail -1 | tr -d '\r' | sed 's/.*seq //')
sleep 0.5
if portcullis audit verify --root $ROOT ${acked:+--expect-last $acked} $AUDIT > $RUN/verify.out 2>&1; then
    result audit PASS "($(tail -1 $RUN/verify.out); acknowledged up to seq $acked)"
else
    result audit FAIL "($(cat $RUN/verify.out))"
fi
cat $RUN/verify.out
echo "--- collector:"; tail -5 $RUN/collector.log | sed 's/^/    | /'

echo "STAGE checks done"
for g in $SUITE policy_pd.1 cryptod.1 unlocker.1; do show_log $g; done
for f in $RUN/proxy-*.err; do [ -s "$f" ] && { echo "--- $f:"; cat "$f"; }; done
xl list
echo "--- xl dmesg (guest lines):"
xl dmesg | grep -E '\(d[1-9]' | tail -40
exit $failed
