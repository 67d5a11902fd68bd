#!/usr/bin/env python3
"""Token interop between the `portcullis` CLI and pycose (an implementation we did
not write).

1. A token minted by `portcullis token mint` verifies with pycose, and its claims
   decode with cbor2 to what was asked for.
2. Tokens signed by pycose (alg -19 and the older EdDSA -8) verify with
   `portcullis token verify`.
3. One byte flipped anywhere in a minted token makes `portcullis token verify`
   fail with exit code 1 and the reason that matches where the byte was.
4. An audit log written here (records encoded with cbor2, hash-chained with
   hashlib, one batch sealed by a pycose COSE_Sign1) passes
   `portcullis audit verify`; the same log with a record edited, or sealed
   by another key, fails.
5. An attestation signed by `portcullis attest sign` (cryptod's code) verifies
   with pycose and its claims decode with cbor2; one signed by pycose passes
   `portcullis attest verify`, and is refused when stale, for another domain
   or another action.

Run by `cargo xtask interop` (and so by `cargo xtask test`).
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time

import cbor2
from pycose.algorithms import CoseAlgorithm, EdDSA
from pycose.keys import CoseKey, OKPKey
from pycose.messages import Sign1Message

CLAIM = {"iss": 1, "sub": 2, "aud": 3, "exp": 4, "nbf": 5, "iat": 6, "cti": 7, "scope": 9, "nonce": 10}


@CoseAlgorithm.register_attribute()
class Ed25519(EdDSA):
    """RFC 9864 fully-specified Ed25519 (-19). pycose 1.1 predates it; the
    signature scheme is exactly EdDSA with the Ed25519 curve."""

    identifier = -19
    fullname = "Ed25519"


class Check:
    def __init__(self, cli, tmp):
        self.cli = cli
        self.tmp = tmp
        self.failures = 0
        self.passed = 0

    def run(self, *args, stdin=None):
        return subprocess.run([self.cli, *args], input=stdin, capture_output=True, timeout=30)

    def expect(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failures += 1
            print(f"FAIL: {what}", file=sys.stderr)


def load_key(path):
    with open(path, "rb") as f:
        return CoseKey.decode(f.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--portcullis", required=True)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        c = Check(args.portcullis, tmp)
        prefix = os.path.join(tmp, "signer")
        r = c.run("keygen", "--out", prefix)
        if r.returncode != 0:
            print(r.stderr.decode(), file=sys.stderr)
            sys.exit("keygen failed")
        priv, pub = load_key(prefix + ".key"), load_key(prefix + ".pub")
        now = int(time.time())

        # 1. ours -> pycose
        tok_path = os.path.join(tmp, "tok.cose")
        r = c.run("token", "mint", "--key", prefix + ".key", "--sub", "policy_pd", "--aud", "netd",
                  "--scope", "net:modify", "--ttl", "120", "--nonce", "00112233445566778899aabbccddeeff",
                  "--now", str(now), "--out", tok_path)
        c.expect(r.returncode == 0, f"mint exits 0 ({r.stderr.decode().strip()})")
        token = open(tok_path, "rb").read()
        msg = Sign1Message.decode(token)
        msg.key = pub
        c.expect(msg.verify_signature(), "pycose verifies the signature of a portcullis token")
        phdr = cbor2.loads(msg.phdr_encoded)
        c.expect(phdr.get(1) == -19, f"alg is -19 (got {phdr!r})")
        c.expect(phdr.get(4) == bytes(pub.kid), "kid in protected header matches the key file")
        c.expect(cbor2.loads(token).tag == 18, "token is tagged COSE_Sign1 (18)")
        claims = cbor2.loads(msg.payload)
        c.expect(claims[CLAIM["sub"]] == "policy_pd", "sub claim")
        c.expect(claims[CLAIM["aud"]] == "netd", "aud claim")
        c.expect(claims[CLAIM["scope"]] == "net:modify", "scope claim")
        c.expect(claims[CLAIM["iat"]] == now and claims[CLAIM["exp"]] == now + 120, "iat/exp claims")
        c.expect(claims[CLAIM["nonce"]] == bytes.fromhex("00112233445566778899aabbccddeeff"), "nonce claim")
        c.expect(len(claims[CLAIM["cti"]]) == 16, "16-byte cti")
        r = c.run("token", "verify", "--pub", prefix + ".pub", "--aud", "netd", "--scope", "net:modify",
                  "--now", str(now + 1), tok_path)
        c.expect(r.returncode == 0, f"portcullis verifies its own token ({r.stderr.decode().strip()})")

        # 2. pycose -> ours, with both algorithm ids
        for alg in (Ed25519, EdDSA):
            claims = {1: "cryptod", 2: "unlocker", 3: "unlock-agent", 4: now + 60, 5: now, 6: now,
                      7: os.urandom(16), 9: "luks:unlock", 10: os.urandom(16)}
            m = Sign1Message(phdr={1: alg, 4: bytes(priv.kid)}, payload=cbor2.dumps(claims))
            # Our key files say alg -19; sign with the same key material under each id.
            m.key = OKPKey(crv="Ed25519", x=priv.x, d=priv.d)
            path = os.path.join(tmp, f"py-{alg.identifier}.cose")
            with open(path, "wb") as f:
                f.write(m.encode(tag=True))
            r = c.run("token", "verify", "--pub", prefix + ".pub", "--aud", "unlock-agent",
                      "--scope", "luks:unlock", "--now", str(now + 1), path)
            c.expect(r.returncode == 0,
                     f"portcullis verifies a pycose token with alg {alg.identifier} ({r.stderr.decode().strip()})")
            r = c.run("token", "verify", "--pub", prefix + ".pub", "--aud", "netd",
                      "--scope", "luks:unlock", "--now", str(now + 1), path)
            c.expect(r.returncode == 1 and b"wrong_audience" in r.stderr,
                     "a pycose token for another audience is refused as wrong_audience")

        # 3. one byte flipped anywhere
        sig_start = len(token) - 64
        payload_start = token.find(msg.payload)
        kid = bytes(pub.kid)
        kid_start = token.find(kid)
        seen = {}
        for i in range(len(token)):
            for mask in (0x01, 0x80):
                bad = bytearray(token)
                bad[i] ^= mask
                r = c.run("token", "verify", "--pub", prefix + ".pub", "--aud", "netd", "--scope", "net:modify",
                          "--now", str(now + 1), "-", stdin=bytes(bad))
                reason = r.stderr.decode().strip()
                code = reason[reason.rfind("(") + 1:-1] if reason.endswith(")") else reason
                seen[code] = seen.get(code, 0) + 1
                c.expect(r.returncode == 1 and reason.startswith("invalid:") and "\n" not in reason,
                         f"byte {i} ^ {mask:#x}: exit 1 with one reason line (got {r.returncode}: {reason!r})")
                if i >= sig_start or payload_start <= i < payload_start + len(msg.payload):
                    c.expect(code == "bad_signature", f"byte {i} (signed content) -> bad_signature, got {code}")
                elif kid_start <= i < kid_start + len(kid):
                    c.expect(code == "unknown_kid", f"byte {i} (kid) -> unknown_kid, got {code}")
                else:
                    c.expect(code in ("malformed", "wrong_algorithm", "unknown_kid", "bad_signature"),
                             f"byte {i} (structure) -> a structural reason, got {code}")
        print("flipped-byte reasons:", ", ".join(f"{k}={v}" for k, v in sorted(seen.items())))

        # 4. an audit log sealed by pycose -> portcullis audit verify
        audit_seal_check(c, tmp, prefix, priv, now)

        # 5. attestations both ways
        attestation_check(c, tmp, prefix, priv, pub, now)

        print(f"pycose interop: {c.passed} passed, {c.failures} failed")
        sys.exit(1 if c.failures else 0)


ATTESTATION_CT = "application/portcullis.attestation+cbor"


def attestation_check(c, tmp, prefix, priv, pub, now):
    epk, nonce, measured = os.urandom(32), os.urandom(16), os.urandom(32)
    path = os.path.join(tmp, "att.cose")
    r = c.run("attest", "sign", "--key", prefix + ".key", "--domid", "5", "--vm", "unlocker",
              "--action", "luks:unlock", "--pubkey", epk.hex(), "--nonce", nonce.hex(),
              "--measurement", measured.hex(), "--now", str(now), "--out", path)
    c.expect(r.returncode == 0, f"attest sign exits 0 ({r.stderr.decode().strip()})")
    signed = open(path, "rb").read()
    msg = Sign1Message.decode(signed)
    msg.key = pub
    c.expect(msg.verify_signature(), "pycose verifies the signature of a portcullis attestation")
    phdr = cbor2.loads(msg.phdr_encoded)
    c.expect(phdr == {1: -19, 3: ATTESTATION_CT, 4: bytes(pub.kid)},
             f"attestation protected header is alg, content type, kid (got {phdr!r})")
    c.expect(cbor2.loads(signed).tag == 18, "attestation is tagged COSE_Sign1 (18)")
    claims = cbor2.loads(msg.payload)
    c.expect(claims == {"subject_domid": 5, "subject_vm": "unlocker", "subject_pubkey": epk,
                        "action": "luks:unlock", "nonce": nonce, "issued_at": now,
                        "expires_at": now + 60, "measurement": measured},
             f"attestation claims decode to what was signed (got {claims!r})")

    def verify(path, *extra, domid="5", action="luks:unlock", at=now + 1):
        return c.run("attest", "verify", "--pub", prefix + ".pub", "--domid", domid, "--vm", "unlocker",
                     "--action", action, "--now", str(at), *extra, path)

    r = verify(path, "--pubkey", epk.hex())
    c.expect(r.returncode == 0, f"portcullis verifies its own attestation ({r.stderr.decode().strip()})")

    claims = {"subject_domid": 5, "subject_vm": "unlocker", "subject_pubkey": epk,
              "action": "luks:unlock", "nonce": os.urandom(16), "issued_at": now,
              "expires_at": now + 60}
    m = Sign1Message(phdr={1: Ed25519, 3: ATTESTATION_CT, 4: bytes(priv.kid)},
                     payload=cbor2.dumps(claims))
    m.key = OKPKey(crv="Ed25519", x=priv.x, d=priv.d)
    path = os.path.join(tmp, "py-att.cose")
    with open(path, "wb") as f:
        f.write(m.encode(tag=True))
    r = verify(path)
    c.expect(r.returncode == 0 and b"measurement=none" in r.stdout,
             f"portcullis verifies a pycose attestation ({r.stderr.decode().strip()})")
    for what, kwargs, reason in (
        ("stale", {"at": now + 61}, b"attestation: stale"),
        ("for another domain", {"domid": "6"}, b"subject is not this peer"),
        ("for another action", {"action": "key:rotate"}, b"action is not this request's"),
    ):
        r = verify(path, **kwargs)
        c.expect(r.returncode == 1 and reason in r.stderr,
                 f"a pycose attestation {what} is refused ({r.returncode}: {r.stderr.decode().strip()})")
    # A token is not an attestation, nor the other way round.
    r = c.run("token", "verify", "--pub", prefix + ".pub", "--aud", "unlock_agent",
              "--scope", "luks:unlock", "--now", str(now + 1), path)
    c.expect(r.returncode == 1, "an attestation is refused as a token")


def bstr_item(b):
    return cbor2.dumps(bytes(b))


def audit_log(records, seal_key, kid, now):
    """Encoded records (hash-chained) and one seal over them, as stored."""
    chain_id = os.urandom(16)
    prev = bytes(32)
    items = []
    for seq, (actor, action) in enumerate(records):
        rec = {"chain_id": chain_id, "seq": seq,
               "entry_id": hashlib.sha256(chain_id + seq.to_bytes(8, "big")).digest()[:16],
               "prev_hash": prev, "actor": actor, "action": action, "result": "ok",
               "timestamp": now}
        enc = cbor2.dumps(rec)
        prev = hashlib.sha256(enc).digest()
        items.append(enc)
    seal = {"chain_id": chain_id, "first_seq": 0, "last_seq": len(records) - 1,
            "head_hash": prev, "timestamp": now}
    m = Sign1Message(phdr={1: Ed25519, 3: "application/portcullis.audit-seal+cbor", 4: kid},
                     payload=cbor2.dumps(seal))
    m.key = seal_key
    items.append(m.encode(tag=True))
    return items


def audit_seal_check(c, tmp, prefix, priv, now):
    key = OKPKey(crv="Ed25519", x=priv.x, d=priv.d)
    records = [("cryptod", "chain_start"), ("policy_pd", "token_issue"), ("unlocker", "totp_validate")]

    def verify(name, items):
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(b"".join(bstr_item(i) for i in items))
        return c.run("audit", "verify", "--root", prefix + ".pub", path)

    items = audit_log(records, key, bytes(priv.kid), now)
    # pycose itself verifies the seal it made.
    m = Sign1Message.decode(items[-1])
    m.key = key
    c.expect(m.verify_signature(), "pycose verifies its audit seal")
    r = verify("audit.log", items)
    c.expect(r.returncode == 0,
             f"portcullis audit verify accepts a pycose-sealed log ({r.stderr.decode().strip()})")
    edited = list(items)
    rec = cbor2.loads(edited[1])
    rec["actor"] = "mallory"
    edited[1] = cbor2.dumps(rec)
    r = verify("edited.log", edited)
    c.expect(r.returncode == 1 and b"breaks at item 2" in r.stderr,
             f"an edited record under a pycose seal is refused ({r.stderr.decode().strip()})")
    other = OKPKey.generate_key(crv="Ed25519")
    forged = audit_log(records, other, bytes(priv.kid), now)
    r = verify("forged.log", forged)
    c.expect(r.returncode == 1 and b"signature" in r.stderr,
             f"a seal by another key is refused ({r.stderr.decode().strip()})")


if __name__ == "__main__":
    main()
