#!/usr/bin/env python3
"""Restores a snapshot of a format 2 offsite repository with the Python 3
standard library and the stock tools age (and age-keygen), zstd, b3sum and
openssl: docs/format.md ("Restoring without offsite", format 2) and
docs/design/format-v2.md 6.4, for the day offsite itself is not available.

usage: restore-without-offsite-v2.py REPO_DIR SNAPSHOT_ID IDENTITY_FILE OUTPUT
                                     [--owner-key offsite-owner1...] [--no-signatures]
  REPO_DIR       a local copy of the repository (for a bucket: aws s3 sync,
                 gsutil rsync or b2 sync the target's prefix to a directory first)
  IDENTITY_FILE  the owner's age identity, or any recipient's
  OUTPUT         must not exist; as for the format 1 script: a sqlite snapshot
                 becomes the database OUTPUT, a duckdb one OUTPUT and (when it
                 has one) OUTPUT.wal, a files snapshot the directory OUTPUT.
  --owner-key    the repository owner's key (offsite-owner1..., printed by
                 `offsite keygen` and `offsite init`); derived from the identity
                 when it is the owner's, required for any other recipient's.
  --no-signatures  skip every signature check (for a machine without openssl):
                 the restore is then unauthenticated, and says so.

What it checks, in order: the newest keyring/ object that the owner key
signed (and whose previous hash chains); the key bundle the keyring names for
the identity's recipient, against the keyring's public keys and chunk key
check; the manifest's signature by the owner or a writer valid at its
`finished`; each list object on the cheapest chain full -> delta -> ... to the
snapshot, signed the same way, and BLAKE3 of the rebuilt canonical full list
against the manifest's list_blake3; index files (signed; pack trailers,
signed, only for chunks no index file names); every chunk against its keyed
BLAKE3 id (b3sum --keyed) before it is written. Paths are checked as the
format 1 script checks them: nothing absolute, no empty, "." or ".."
component, no control character, and the parent of every entry is a
directory of the snapshot, so nothing is written through a link or outside
OUTPUT. Everything is written under OUTPUT.partial (OUTPUT.wal.partial) and
renamed into place at the end; any refusal exits 1, removes what it wrote
and leaves OUTPUT absent.
"""

import argparse
import calendar
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

PROG = "restore-without-offsite-v2"

OWNER_SIGNING_CONTEXT = "offsite 2026-12 owner signing key v2"
CHUNK_KEY_CHECK_CONTEXT = "offsite 2026-12 chunk key check v2"
HOLDER_ID_CONTEXT = "offsite 2026-12 key holder id v2"

# DER prefixes: an Ed25519 PKCS#8 private key from a 32-byte seed, and an
# Ed25519 SubjectPublicKeyInfo from a 32-byte public key (RFC 8410).
ED25519_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")

MANIFEST_FIELDS = [
    "format", "version", "id", "source", "kind", "host", "writer", "started",
    "finished", "size", "files", "chunks", "new_bytes", "uploaded_bytes",
    "list_blake3", "parent", "generation", "keyring", "page_size", "tags", "tool",
]
KEYRING_FIELDS = [
    "format", "version", "keyset", "serial", "previous", "created", "owner",
    "chunk_key_check", "generation", "generations", "recipients",
    "removed_recipients", "writers",
]
MAX_MANIFEST = 1 << 20
MAX_PATH_OBJECTS = 16
SNAPSHOT_ID = re.compile(r"^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z-[0-9a-f]{8}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
PACK_KEY = re.compile(r"^packs/([0-9a-f]{2})/([0-9a-f]{64})$")
TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$")


class Refuse(Exception):
    """A reason to stop: printed, exit 1, nothing left at the output."""


def warn(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- tools


def run(args, data=None, what=None):
    """Runs a stock tool; its stdout, or a refusal naming what failed."""
    r = subprocess.run(args, input=data, capture_output=True)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip()
        raise Refuse(f"{what or args[0]}: `{' '.join(args[:2])}` failed: {err}")
    return r.stdout


def require_tools(signatures):
    tools = {
        "age": "apt-get install age",
        "age-keygen": "apt-get install age",
        "zstd": "apt-get install zstd",
        "b3sum": "apt-get install b3sum (Debian 12 ships 1.2.0, which is enough)",
    }
    if signatures:
        tools["openssl"] = "apt-get install openssl (or pass --no-signatures, unauthenticated)"
    for tool, how in tools.items():
        if shutil.which(tool) is None:
            raise Refuse(f"`{tool}` is not installed: {how}")


def b3_derive(context, material, length=32):
    out = run(["b3sum", "--derive-key", context, "--no-names", "-l", str(length)], material)
    return bytes.fromhex(out.decode().strip())


def b3_hash(data):
    return run(["b3sum", "--raw"], data)


def age_public(identity_text):
    """The age1... recipient of an AGE-SECRET-KEY-1... line."""
    return run(["age-keygen", "-y"], (identity_text + "\n").encode(), "age-keygen").decode().strip()


def age_zstd(src, identity_file, sink, limit):
    """Streams `age -d -i IDENTITY SRC | zstd -d` into `sink` (a callable),
    stopping after `limit` bytes; (bytes, too large, age error, zstd error),
    an error being None when that tool succeeded. The zstd window is capped
    at 8 MiB, as offsite caps it for signed metadata."""
    age = subprocess.Popen(["age", "-d", "-i", identity_file, src],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    zstd = subprocess.Popen(["zstd", "-d", "-q", "-c", "--memory=8MB"], stdin=age.stdout,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    age.stdout.close()
    total, too_large = 0, False
    while True:
        block = zstd.stdout.read(min(1 << 20, limit + 1 - total))
        if not block:
            break
        if total + len(block) > limit:
            too_large = True
            zstd.kill()
            break
        sink(block)
        total += len(block)
    zstd.stdout.close()
    zerr = zstd.stderr.read().decode(errors="replace").strip()
    zstd.wait()
    aerr = age.stderr.read().decode(errors="replace").strip()
    age.wait()
    return (total, too_large, aerr if age.returncode else None,
            zerr if zstd.returncode and not too_large else None)


def decode_object(work, raw, identity_file, what, limit):
    """The plaintext of the object `raw`, refused beyond `limit` bytes (a
    hostile object is not decompressed without end) or when it does not
    decode."""
    src = os.path.join(work, "object")
    with open(src, "wb") as f:
        f.write(raw)
    out = []
    _, too_large, aerr, zerr = age_zstd(src, identity_file, out.append, limit)
    if too_large:
        raise Refuse(f"{what} decodes to more than {limit} bytes, more than such an object "
                     "can honestly hold: refused unread")
    if aerr is not None:
        raise Refuse(f"{what}: age cannot decrypt it ({aerr})")
    if zerr is not None:
        raise Refuse(f"{what}: zstd cannot decompress it ({zerr})")
    return b"".join(out)


def decode_to_file(raw_path, length, identity_file, dest, what, limit):
    """Decodes the first `length` bytes of file `raw_path` (a pack's DATA) into
    `dest`: (bytes decoded, the error when it broke off, else None)."""
    cut = dest + ".enc"
    with open(raw_path, "rb") as f, open(cut, "wb") as o:
        left = length
        while left:
            block = f.read(min(left, 1 << 20))
            if not block:
                raise Refuse(f"{what} is shorter than its footer says")
            o.write(block)
            left -= len(block)
    with open(dest, "wb") as o:
        total, too_large, aerr, zerr = age_zstd(cut, identity_file, o.write, limit)
    os.unlink(cut)
    if too_large:
        raise Refuse(f"{what}: its data decodes to more bytes than its index names")
    error = (f"age: {aerr}" if aerr is not None else f"zstd: {zerr}" if zerr is not None
             else None)
    return total, error


# ---------------------------------------------------------------- bech32 (BIP 173)

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _polymod(values):
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for v in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= gen[i]
    return chk


def _hrp_expand(hrp):
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_encode(hrp, data):
    acc, bits, five = 0, 0, []
    for b in data:
        acc = (acc << 8) | b
        bits += 8
        while bits >= 5:
            bits -= 5
            five.append((acc >> bits) & 31)
    if bits:
        five.append((acc << (5 - bits)) & 31)
    pm = _polymod(_hrp_expand(hrp) + five + [0] * 6) ^ 1
    check = [(pm >> (5 * (5 - i))) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[d] for d in five + check)


def bech32_decode(text, hrp, length, what):
    """The `length` bytes of a bech32 string with prefix `hrp`, in either case
    but otherwise exactly as offsite writes it (as keys/v2.rs decodes)."""
    s = text.strip()
    if s != s.lower() and s != s.upper():
        raise Refuse(f"{what} {s!r} mixes upper and lower case")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1 or s[:pos] != hrp:
        raise Refuse(f"{what} {s!r} does not start with {hrp}1")
    data = [CHARSET.find(c) for c in s[pos + 1:]]
    if -1 in data or len(data) < 6 or _polymod(_hrp_expand(hrp) + data) != 1:
        raise Refuse(f"{what}: its bech32 encoding is damaged (a character mistyped, missing or added)")
    acc, bits, out = 0, 0, bytearray()
    for d in data[:-6]:
        acc = (acc << 5) | d
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if len(out) != length or bech32_encode(hrp, bytes(out)) != s:
        raise Refuse(f"{what} {s!r} is not a {length}-byte key as offsite writes it")
    return bytes(out)


# ---------------------------------------------------------------- signatures


def owner_public_of(identity_line):
    """The owner key offsite derives from an age identity (docs/format.md,
    "Key strings and derivations"): the Ed25519 key of the seed
    derive_key(OWNER_SIGNING_CONTEXT, identity text)."""
    seed = b3_derive(OWNER_SIGNING_CONTEXT, identity_line.encode())
    der = run(["openssl", "pkey", "-inform", "DER", "-pubout", "-outform", "DER"],
              ED25519_PKCS8_PREFIX + seed, "deriving the owner key")
    return bech32_encode("offsite-owner", der[-32:])


def signer_key_bytes(signer):
    """The 32-byte Ed25519 key of an offsite-owner1... or offsite-writer1... string."""
    hrp = signer.rsplit("1", 1)[0].lower() if "1" in signer else ""
    if hrp == "offsite-owner":
        return bech32_decode(signer, "offsite-owner", 32, "owner key")
    if hrp == "offsite-writer":
        return bech32_decode(signer, "offsite-writer", 64, "writer key")[:32]
    raise Refuse(f"{signer!r} is not an offsite-owner1... or offsite-writer1... key")


class Verifier:
    """Checks signature lines (docs/format.md, "The signature line") of one
    key set by the signers given; with check=False it only splits them off."""

    def __init__(self, work, keyset, signers, check=True):
        self.work, self.keyset, self.signers, self.check = work, keyset, set(signers), check

    def open(self, key, plain):
        """(body, signer) of the signed object `plain` stored under `key`."""
        if not plain.endswith(b"\n"):
            raise Refuse(f"{key}: the signature line does not end with a newline "
                         "(or the object is not signed)")
        start = plain.rfind(b"\n", 0, len(plain) - 1) + 1
        body, line = plain[:start], plain[start:-1]
        if not line.startswith(b"offsite-signature "):
            raise Refuse(f"{key} is not signed: its last line is not an offsite-signature line")
        if not body:
            raise Refuse(f"{key}: nothing precedes the signature line")
        fields = line.decode("ascii", errors="replace").split(" ")
        if len(fields) != 4 or fields[1] != "2":
            raise Refuse(f"{key}: malformed signature line")
        _, _, signer, sig = fields
        if not re.fullmatch(r"[0-9a-f]{128}", sig):
            raise Refuse(f"{key}: the signature is not 128 lowercase hex digits")
        if not self.check:
            return body, signer
        if signer not in self.signers:
            raise Refuse(f"{key} is signed by {signer}, which is not a signer of this key set")
        public = signer_key_bytes(signer)
        message = (b"offsite-signature 2\n" + self.keyset.encode() + b"\n" + key.encode()
                   + b"\n" + b3_hash(body))
        paths = {n: os.path.join(self.work, n) for n in ("msg", "sig", "signer.der")}
        for name, data in (("msg", message), ("sig", bytes.fromhex(sig)),
                           ("signer.der", ED25519_SPKI_PREFIX + public)):
            with open(paths[name], "wb") as f:
                f.write(data)
        r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER",
                            "-inkey", paths["signer.der"], "-rawin", "-in", paths["msg"],
                            "-sigfile", paths["sig"]], capture_output=True)
        if r.returncode != 0:
            raise Refuse(f"{key}: the signature by {signer} does not match: the object was "
                         "changed, or was signed under another name or for another key set")
        return body, signer


# ---------------------------------------------------------------- small parsers


def time_ns(text, what):
    """An RFC 3339 UTC time as offsite writes it, as nanoseconds since 1970."""
    m = TIME.match(text) if isinstance(text, str) else None
    if not m:
        raise Refuse(f"{what}: {text!r} is not an RFC 3339 UTC time")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or "").ljust(9, "0")
    return calendar.timegm((y, mo, d, h, mi, s)) * 10**9 + int(frac)


def is_snapshot_id(s):
    m = SNAPSHOT_ID.match(s)
    if not m:
        return False
    try:
        datetime.datetime(*(int(g) for g in m.groups()))
    except ValueError:
        return False
    return True


def canon_int(s, lo, hi):
    """A canonical decimal (no sign, no leading zeros) in [lo, hi], or None."""
    if not re.fullmatch(r"-?[0-9]+", s):
        return None
    v = int(s)
    return v if str(v) == s and lo <= v <= hi else None


def strict_json(body, what, fields, exact_order):
    """A JSON object body with exactly `fields` (in order when `exact_order`)."""
    try:
        pairs = json.loads(body.decode("utf-8"), object_pairs_hook=lambda p: p)
    except (UnicodeDecodeError, ValueError) as e:
        raise Refuse(f"{what}: not JSON: {e}")
    if not isinstance(pairs, list):
        raise Refuse(f"{what}: not a JSON object")
    names = [k for k, _ in pairs]
    if (names != fields) if exact_order else (sorted(names) != sorted(fields)):
        raise Refuse(f"{what}: its fields are {names}, not {fields}")
    return json.loads(body.decode("utf-8"))


# ---------------------------------------------------------------- keys


def identity_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            lines = [l.strip() for l in f]
    except OSError as e:
        raise Refuse(f"cannot read the identity file {path}: {e.strerror}")
    ids = [l.upper() for l in lines if l.upper().startswith("AGE-SECRET-KEY-1")]
    if not ids:
        raise Refuse(f"{path} holds no age identity (AGE-SECRET-KEY-1...)")
    return ids


def open_keyring(ctx):
    """The newest keyring/ object that the owner key signed (design 2.4 step
    1), as a dict; the candidates passed over are warnings."""
    names = sorted((n for n in os.listdir(ctx.path("keyring")) if re.fullmatch(r"\d{8}", n)),
                   reverse=True) if os.path.isdir(ctx.path("keyring")) else []
    if not names:
        raise Refuse(f"{ctx.repo} has no keyring/ objects: it is not a format 2 repository "
                     "written by offsite, or the copy is incomplete")
    problems = []
    for name in names:
        key = f"keyring/{name}"
        try:
            ring = keyring_candidate(ctx, key, int(name), names)
        except Refuse as e:
            problems.append(str(e))
            continue
        for p in problems:
            warn(f"passing over {p}")
        return ring
    if not ctx.owner_key_given and all("which is not a signer" in p for p in problems):
        raise Refuse(
            f"keyring/{names[0]} is not signed by the owner key derived from this identity "
            f"({', '.join(sorted(ctx.owners))}): this identity is not the owner's. Pass the "
            "owner key: --owner-key offsite-owner1... (printed by `offsite init` and `offsite "
            "keygen`; keep it with the config, docs/disaster-recovery.md)")
    raise Refuse("no keyring this script can trust: " + "; ".join(problems))


def keyring_candidate(ctx, key, serial, present):
    raw = ctx.read(key)
    body, _ = ctx.owner_verifier.open(key, raw)
    ring = strict_json(body, key, KEYRING_FIELDS, exact_order=False)
    if ring.get("format") != "offsite-keyring" or ring.get("version") != 2:
        raise Refuse(f"{key}: not a format 2 keyring")
    if ring["serial"] != serial:
        raise Refuse(f"{key}: it says serial {ring['serial']}")
    if ctx.verify and ring["owner"] not in ctx.owners:
        raise Refuse(f"{key}: it names owner {ring['owner']}, not {', '.join(sorted(ctx.owners))}")
    if ring["keyset"] != ctx.keyset:
        raise Refuse(f"{key}: it is of key set {ring['keyset']}, config says {ctx.keyset}")
    before = f"{serial - 1:08}"
    if ctx.verify and serial > 1 and before in present:
        want = b3_hash(ctx.read(f"keyring/{before}")).hex()
        if ring["previous"] != want:
            raise Refuse(f"{key}: its previous hash is not that of keyring/{before}")
    gens = ring["generations"]
    if not isinstance(gens, list) or [g.get("n") for g in gens] != list(range(1, len(gens) + 1)) \
            or ring["generation"] != len(gens) or not gens:
        raise Refuse(f"{key}: its generations are not 1 to its current one")
    if sum(1 for r in ring["recipients"] if r.get("owner") is True) != 1:
        raise Refuse(f"{key}: not exactly one recipient is the owner's")
    return ring


def open_bundle(ctx, ring, identity):
    """The checked secrets of the bundle the keyring names for `identity`'s
    recipient (design 2.3): (scratch identity file, chunk key K)."""
    recipient = age_public(identity)
    entry = next((r for r in ring["recipients"] if r.get("recipient") == recipient), None)
    if entry is None:
        gone = next((r for r in ring["removed_recipients"] if r.get("recipient") == recipient), None)
        if gone:
            raise Refuse(f"this identity ({recipient}) was removed from the repository on "
                         f"{gone.get('removed')}: it reads nothing written since")
        raise Refuse(f"the keyring lists no recipient {recipient}: this identity is not one "
                     "of this repository's")
    gen = ring["generation"]
    holder = b3_derive(HOLDER_ID_CONTEXT, recipient.encode(), 16).hex()
    bundle = entry.get("bundle", "")
    if not re.fullmatch(rf"keys/{gen:04}/{holder}-[0-9a-fA-F]{{8}}", bundle):
        raise Refuse(f"the keyring names {bundle!r} as the bundle of {recipient}, "
                     "which is not a bundle name for it")
    forged = f"{bundle}: not the keys the keyring names; someone with write access replaced it"
    plain = decode_object(ctx.work, ctx.read(bundle), ctx.identity_file, bundle, 1 << 20)
    b = strict_json(plain, bundle, ["format", "version", "keyset", "holder", "generation",
                                    "chunk_key", "generations"], exact_order=False)
    if (b["format"], b["version"], b["keyset"], b["holder"]) != \
            ("offsite-keys", 2, ctx.keyset, recipient):
        raise Refuse(f"{forged} (it is not a bundle of this key set for {recipient})")
    if b["generation"] != gen or len(b["generations"]) != gen:
        raise Refuse(f"{forged} (it carries generation {b['generation']} of {gen})")
    if not HEX64.match(b["chunk_key"] or ""):
        raise Refuse(f"{forged} (its chunk key is not 64 hex digits)")
    chunk_key = bytes.fromhex(b["chunk_key"])
    if b3_derive(CHUNK_KEY_CHECK_CONTEXT, chunk_key, 16).hex() != ring["chunk_key_check"]:
        raise Refuse(f"{forged} (its chunk key does not match the keyring's chunk_key_check)")
    secrets = []
    for g, want in zip(b["generations"], ring["generations"]):
        for field in ("data", "metadata"):
            text = g.get(field) if g.get("n") == want["n"] else None
            if not isinstance(text, str) or age_public(text) != want[f"{field}_recipient"]:
                raise Refuse(f"{forged} (generation {want['n']}: its {field} key is not the "
                             f"keyring's {field}_recipient)")
            secrets.append(text)
    scratch = os.path.join(ctx.work, "bundle-identities.txt")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(s + "\n" for s in secrets))
    return scratch, chunk_key


# ---------------------------------------------------------------- lists


def decode_path(s, line, what):
    """A percent-encoded path of a list, only if canonical (docs/format.md)."""
    out, i, raw = bytearray(), 0, s.encode("ascii", errors="replace")
    while i < len(raw):
        if raw[i] == 0x25:
            h = s[i + 1:i + 3]
            if not re.fullmatch(r"[0-9A-Fa-f]{2}", h):
                raise Refuse(f"{what} line {line}: malformed percent-encoding in {s}")
            out.append(int(h, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    try:
        path = out.decode("utf-8")
    except UnicodeDecodeError:
        raise Refuse(f"{what} line {line}: the name {s} is not UTF-8")
    if encode_path(path) != s:
        raise Refuse(f"{what} line {line}: {s} is not canonically encoded")
    return path


def encode_path(p):
    return "".join(chr(b) if (chr(b).isascii() and (chr(b).isalnum() or chr(b) in "._~/+,@=:-"))
                   else f"%{b:02X}" for b in p.encode("utf-8"))


def parse_entry(line, n, what):
    """(path, entry) of a canonical D, F or L line; entry is a tuple."""
    f = line.split(" ")
    ok = False
    if f[0] == "F" and len(f) == 5 and re.fullmatch(r"[0-7]+", f[1]):
        size, mtime = canon_int(f[2], 0, 2**64 - 1), canon_int(f[3], -2**63, 2**63 - 1)
        mode = int(f[1], 8)
        ok = size is not None and mtime is not None and f"{mode:o}" == f[1] and mode < 2**32
        entry = ("F", mode, size, mtime, decode_path(f[4], n, what)) if ok else None
    elif f[0] == "D" and len(f) == 3 and re.fullmatch(r"[0-7]+", f[1]):
        mode = int(f[1], 8)
        ok = f"{mode:o}" == f[1] and mode < 2**32
        entry = ("D", mode, decode_path(f[2], n, what)) if ok else None
    elif f[0] == "L" and len(f) == 3:
        ok = True
        entry = ("L", decode_path(f[1], n, what), decode_path(f[2], n, what))
    if not ok or entry_path(entry) == "":
        raise Refuse(f"{what} line {n}: malformed line {line[:80]!r}")
    return entry_path(entry), entry


def entry_path(e):
    return e[4] if e[0] == "F" else e[2] if e[0] == "D" else e[1]


def entry_line(e):
    if e[0] == "F":
        return f"F {e[1]:o} {e[2]} {e[3]} {encode_path(e[4])}"
    if e[0] == "D":
        return f"D {e[1]:o} {encode_path(e[2])}"
    return f"L {encode_path(e[1])} {encode_path(e[2])}"


def parse_chunk(id_s, len_s):
    n = canon_int(len_s, 1, 2**32 - 1)
    return (id_s, n) if HEX64.match(id_s) and n is not None else None


def canon_key(path):
    """Canonical order: component by component, as bytes."""
    return tuple(c.encode("utf-8") for c in path.split("/"))


def body_lines(body, header, what):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refuse(f"{what}: not UTF-8")
    if not text.endswith("\n"):
        raise Refuse(f"{what}: the last line has no newline")
    lines = text[:-1].split("\n")
    if lines[0] != header:
        raise Refuse(f"{what}: line 1: expected the header {header!r}, found {lines[0][:40]!r}")
    return list(enumerate(lines[1:], start=2))


def check_sizes(state, what):
    for path, (entry, chunks) in state.items():
        size = entry[2] if entry[0] == "F" else 0
        total = sum(c[1] for c in chunks)
        if total != size:
            raise Refuse(f"{what}: {path}: its chunks add up to {total} bytes, its size is {size}")


def parse_full(body, what):
    """The state (dict path -> (entry, chunks), canonical order) of a full list."""
    state, last, open_path = {}, None, None
    for n, line in body_lines(body, "offsite-list 2", what):
        parts = line.split(" ")
        if len(parts) == 2 and parse_chunk(*parts):
            if open_path is None or state[open_path][0][0] != "F":
                raise Refuse(f"{what} line {n}: a chunk line not after a file line")
            state[open_path][1].append(parse_chunk(*parts))
            continue
        path, entry = parse_entry(line, n, what)
        if last is not None and not canon_key(last) < canon_key(path):
            raise Refuse(f"{what} line {n}: {path} is out of canonical order (or repeated)")
        state[path] = (entry, [])
        last = open_path = path
    check_sizes(state, what)
    return state


def write_full(state):
    out = ["offsite-list 2\n"]
    for path in sorted(state, key=canon_key):
        entry, chunks = state[path]
        out.append(entry_line(entry) + "\n")
        out.extend(f"{i} {n}\n" for i, n in chunks)
    return "".join(out).encode("utf-8")


def parse_named(item, tag, what):
    if item is None:
        raise Refuse(f"{what}: the delta ends before its from and to lines")
    n, line = item
    f = line.split(" ")
    if len(f) != 3 or f[0] != tag or not f[1] or "/" in f[1] or not HEX64.match(f[2]):
        raise Refuse(f"{what} line {n}: expected `{tag} <snapshot id> <list_blake3>`")
    return (f[1], f[2])


def parse_delta(body, what):
    """(from, to, edits) of a delta; edits are ("R", path) or
    ("E", entry, count or None, [(index, chunk)])."""
    lines = body_lines(body, "offsite-delta 2", what)
    it = iter(lines)
    frm = parse_named(next(it, None), "from", what)
    to = parse_named(next(it, None), "to", what)
    edits = []
    for n, line in it:
        tag, _, rest = line.partition(" ")
        if tag in ("E", "R"):
            if tag == "R":
                path = decode_path(rest, n, what)
                if not path:
                    raise Refuse(f"{what} line {n}: malformed R line")
                edit = ("R", path)
            else:
                path, entry = parse_entry(rest, n, what)
                edit = ["E", entry, None, []]
            if edits and not canon_key(edit_path(edits[-1])) < canon_key(path):
                raise Refuse(f"{what} line {n}: {path} is out of canonical order (or repeated)")
            edits.append(edit)
        elif tag in ("N", "C") and edits and edits[-1][0] == "E" and edits[-1][1][0] == "F":
            e = edits[-1]
            if tag == "N":
                count = canon_int(rest, 0, 2**32 - 1)
                if e[2] is not None or e[3] or count is None:
                    raise Refuse(f"{what} line {n}: N must come once, right after its E line")
                e[2] = count
                continue
            f = rest.split(" ")
            index = canon_int(f[0], 0, 2**32 - 1) if len(f) == 3 else None
            chunk = parse_chunk(f[1], f[2]) if len(f) == 3 else None
            if index is None or chunk is None:
                raise Refuse(f"{what} line {n}: malformed C line")
            if e[3] and e[3][-1][0] >= index:
                raise Refuse(f"{what}: chunk {index} of {entry_path(e[1])} is edited twice or out of order")
            if e[2] is not None and index >= e[2]:
                raise Refuse(f"{what}: chunk {index} of {entry_path(e[1])} is out of bounds")
            e[3].append((index, chunk))
        else:
            raise Refuse(f"{what} line {n}: malformed line (or an N or C line not after an E F line)")
    return frm, to, edits


def edit_path(e):
    return e[1] if e[0] == "R" else entry_path(e[1])


def apply_delta(held, state, delta, what):
    """The child's state: refused unless `held` (id, list_blake3) is the parent
    the delta names, and unless every edit fits (list2.rs, Delta::apply)."""
    frm, to, edits = delta
    if held != frm:
        raise Refuse(f"{what}: the delta is from {frm[0]} (list {frm[1]}), not from "
                     f"{held[0]} (list {held[1]})")
    state = {p: (e, list(c)) for p, (e, c) in state.items()}
    for e in edits:
        if e[0] == "R":
            if state.pop(e[1], None) is None:
                raise Refuse(f"{what}: removes {e[1]}, which the parent does not have")
            continue
        _, entry, count, sets = e
        path = entry_path(entry)
        old = state.pop(path, None)
        slots = list(old[1]) if old and old[0][0] == "F" and entry[0] == "F" else []
        if count is not None:
            if count > len(slots) + len(sets):
                raise Refuse(f"{what}: {path}: chunks added by N are given no C line")
            slots = (slots + [None] * count)[:count]
        for index, chunk in sets:
            if index >= len(slots):
                raise Refuse(f"{what}: chunk {index} of {path} is out of bounds")
            slots[index] = chunk
        if None in slots:
            raise Refuse(f"{what}: {path}: chunk {slots.index(None)} was added by N but given no C line")
        state[path] = (entry, slots)
    check_sizes(state, what)
    return to, state


def plan_path(objects, target, skip):
    """The cheapest chain full -> d -> ... -> d ending at `target`, by listed
    bytes, of at most 16 objects (repo/path.rs): a list of object keys."""
    usable = [o for o in objects if o[3] not in skip]
    best, layer = [], {}

    def relax(layer, at, size, i):
        if at not in layer or size < layer[at][0]:
            layer[at] = (size, i)

    for i, (snap, frm, size, _) in enumerate(usable):
        if frm is None:
            relax(layer, snap, size, i)
    while layer and len(best) < MAX_PATH_OBJECTS:
        nxt = {}
        for i, (snap, frm, size, _) in enumerate(usable):
            if frm is not None and frm in layer:
                relax(nxt, snap, layer[frm][0] + size, i)
        best.append(layer)
        layer = nxt
    hits = [(l[target][0], k) for k, l in enumerate(best) if target in l]
    if not hits:
        return None
    _, length = min(hits)
    chain, at = [], target
    for k in range(length, -1, -1):
        i = best[k][at][1]
        chain.append(usable[i])
        at = usable[i][1] if usable[i][1] is not None else at
    return [o[3] for o in reversed(chain)]


def list_objects(ctx):
    """Every lists/<id>/full and lists/<id>/d-<from> with its size."""
    out = []
    root = ctx.path("lists")
    for snap in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        d = os.path.join(root, snap)
        if not os.path.isdir(d) or "/" in snap:
            continue
        for name in sorted(os.listdir(d)):
            frm = None if name == "full" else name[2:] if name.startswith("d-") and len(name) > 2 else False
            if frm is False:
                continue
            out.append((snap, frm, os.path.getsize(os.path.join(d, name)), f"lists/{snap}/{name}"))
    return out


def read_list_object(ctx, key, finished):
    """('full', named, state) or ('delta', (from, to, edits)), verified and
    its signer trusted for the manifest."""
    raw = ctx.read(key)
    plain = decode_object(ctx.work, raw, ctx.meta_ids, key, len(raw) * 256 + 1024)
    body, signer = ctx.verifier.open(key, plain)
    ctx.trusted(signer, finished, key)
    snap, name = key[len("lists/"):].split("/")
    if name == "full":
        state = parse_full(body, key)
        return ("full", (snap, b3_hash(body).hex()), state)
    delta = parse_delta(body, key)
    if delta[0][0] != name[2:] or delta[1][0] != snap:
        raise Refuse(f"{key} holds the delta from {delta[0][0]} to {delta[1][0]}: a delta is "
                     "stored under lists/<to>/d-<from>")
    return ("delta", delta)


def rebuild_list(ctx, manifest):
    """The snapshot's state along the cheapest path of list objects whose end
    state hashes to the manifest's list_blake3; a path whose objects fail is
    tried again without them (load2.rs)."""
    objects = list_objects(ctx)
    finished = time_ns(manifest["finished"], "the manifest's finished")
    skip, failures, decoded = set(), [], {}
    while True:
        path = plan_path(objects, manifest["id"], skip)
        if path is None:
            tried = "; ".join(failures) or "no list object leads to it"
            raise Refuse(f"snapshots/{manifest['id']}: no path of list objects rebuilds its "
                         f"list: {tried}")
        state, failed = try_path(ctx, path, finished, decoded, manifest["list_blake3"])
        if failed is None:
            print(f"list: {' -> '.join(path)} (list_blake3 {manifest['list_blake3']})")
            return state
        warn(f"skipping {failed[0]} for snapshot {manifest['id']}: {failed[1]}; trying another path")
        failures.append(f"{failed[0]}: {failed[1]}")
        skip.add(failed[0])


def walk(ctx, path, finished, decoded):
    """Yields (key, held, state) after each object of `path`, decoding those
    not held in `decoded` yet; a Refuse names the object that failed."""
    held = state = None
    for key in path:
        try:
            if key not in decoded:
                decoded[key] = read_list_object(ctx, key, finished)
            obj = decoded[key]
            if obj[0] == "full":
                if held is not None:
                    raise Refuse("a full list in the middle of a path")
                held, state = obj[1], obj[2]
            else:
                if held is None:
                    raise Refuse("a path must start at a full list")
                held, state = apply_delta(held, state, obj[1], key)
        except Refuse as e:
            e.key = key
            raise
        yield key, held, state


def try_path(ctx, path, finished, decoded, want):
    """(state, None) when `path` rebuilds the list whose BLAKE3 is `want`;
    else (None, (object at fault, why)): the one that failed, or on a
    mismatch the first whose result is not the list it claims, else the
    last (as load2.rs's culprit)."""
    state = None
    try:
        for _, _, state in walk(ctx, path, finished, decoded):
            pass
    except Refuse as e:
        return None, (e.key, str(e))
    if b3_hash(write_full(state)).hex() == want:
        return state, None
    for key, held, at in walk(ctx, path, finished, decoded):
        if b3_hash(write_full(at)).hex() != held[1]:
            return None, (key, "the list it leads to is not the one it claims")
    return None, (path[-1], "the list it leads to is not the manifest's list_blake3")


def check_paths(state, kind):
    """The format 1 script's rules (docs/format.md "Chunk list"): plain
    relative paths, no control characters, the parent of every entry a
    directory of the snapshot listed before it, each path once."""
    dirs, seen = set(), set()
    for path in sorted(state, key=canon_key):
        entry = state[path][0]
        what = {"F": "file", "D": "directory", "L": "link"}[entry[0]]
        names = [path] + ([entry[2]] if entry[0] == "L" else [])
        for name in names:
            if any(ord(c) < 32 or ord(c) == 127 for c in name):
                raise Refuse(f"control character in the name {encode_path(name)}")
        if path.startswith("/"):
            raise Refuse(f"unsafe {what} path {path}: absolute")
        if any(c in ("", ".", "..") for c in path.split("/")):
            raise Refuse(f"unsafe {what} path {path}")
        if path in seen:
            raise Refuse(f"path {path} is listed twice")
        seen.add(path)
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        if parent is not None and parent not in dirs:
            raise Refuse(f"unsafe {what} path {path}: its parent is not a directory of the "
                         "snapshot (never written through a link)")
        if entry[0] == "D":
            dirs.add(path)
    files = [p for p in sorted(state, key=canon_key) if state[p][0][0] == "F"]
    others = len(state) - len(files)
    if kind == "sqlite" and (len(files) != 1 or others):
        raise Refuse("a sqlite snapshot must be one file")
    if kind == "duckdb" and (not 1 <= len(files) <= 2 or others
                             or (len(files) == 2 and files[1] != files[0] + ".wal")):
        raise Refuse("a duckdb snapshot must be the database and at most its .wal")
    if kind == "duckdb":
        return "duckdb"
    return "single" if len(files) == 1 and not others else "tree"


# ---------------------------------------------------------------- index and packs


def parse_entries(lines, what):
    """Packinfo lines of one pack: [(id, offset, length)], stored order from 0."""
    out, ids, at = [], set(), 0
    for n, line in lines:
        f = line.split(" ")
        chunk = parse_chunk(f[0], f[2]) if len(f) == 3 else None
        offset = canon_int(f[1], 0, 2**32 - 1) if len(f) == 3 else None
        if chunk is None or offset is None:
            raise Refuse(f"{what} line {n}: not `<id> <offset> <length>`")
        if offset != at:
            raise Refuse(f"{what} line {n}: the chunk at offset {offset} does not start where "
                         "the one before ends")
        if chunk[0] in ids:
            raise Refuse(f"{what} line {n}: chunk {chunk[0]} is listed twice in one pack")
        ids.add(chunk[0])
        out.append((chunk[0], offset, chunk[1]))
        at = offset + chunk[1]
    if not out:
        raise Refuse(f"{what}: a pack without chunks")
    return out


def parse_index(body, what):
    """{pack key: entries} of an index file body."""
    packs, current, lines = {}, None, []

    def close():
        if current is not None:
            packs[current] = parse_entries(lines, what)

    for n, line in body_lines(body, "offsite-index 2", what):
        if line.startswith("P "):
            close()
            key = line[2:]
            m = PACK_KEY.match(key)
            if not m or not m.group(2).startswith(m.group(1)):
                raise Refuse(f"{what} line {n}: {key!r} is not a pack key")
            if key in packs:
                raise Refuse(f"{what} line {n}: pack {key} is named twice")
            current, lines = key, []
        elif current is None:
            raise Refuse(f"{what} line {n}: an entry line before any P line")
        else:
            lines.append((n, line))
    close()
    if not packs:
        raise Refuse(f"{what}: it names no pack")
    return packs


def load_damage(ctx):
    """{(pack, chunk id)} that damage records name (unsigned, advisory: a
    copy they name is used last, as offsite does)."""
    damaged = set()
    root = ctx.path("damaged")
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        key = f"damaged/{name}"
        try:
            raw = ctx.read(key)
            text = decode_object(ctx.work, raw, ctx.meta_ids, key, len(raw) * 4 + 1024).decode()
        except (Refuse, UnicodeDecodeError) as e:
            warn(f"skipping {key}: it does not decode ({e})")
            continue
        lines = text.splitlines()
        if not lines or lines[0] not in ("offsite-damaged 1", "offsite-damaged 2"):
            warn(f"skipping {key}: it is not a damage record")
            continue
        pack = None
        for line in lines[1:]:
            if line.startswith("P "):
                pack = line[2:]
            elif HEX64.match(line) and pack:
                damaged.add((pack, line))
    return damaged


def load_index(ctx):
    """{chunk id: [(pack, offset, length)]} from every index file that decodes
    and verifies, and {pack: decoded DATA length}; others are skipped with a
    warning, as offsite skips them (their chunks are not used)."""
    where, data_len = {}, {}
    root = ctx.path("index")
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        key = f"index/{name}"
        try:
            raw = ctx.read(key)
            plain = decode_object(ctx.work, raw, ctx.meta_ids, key, len(raw) * 4 + 1024)
            body, _ = ctx.verifier.open(key, plain)
            packs = parse_index(body, key)
        except Refuse as e:
            warn(f"skipping {key}: {e}; its chunks are not used")
            continue
        add_packs(packs, where, data_len)
    return where, data_len


def add_packs(packs, where, data_len):
    for pack, entries in packs.items():
        data_len[pack] = entries[-1][1] + entries[-1][2]
        for cid, off, length in entries:
            where.setdefault(cid, [])
            if (pack, off, length) not in where[cid]:
                where[cid].append((pack, off, length))


def pack_layout(ctx, pack):
    """(DATA length, META length) from a v2 pack's 24-byte footer."""
    path = ctx.path(pack)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            f.seek(max(size - 24, 0))
            footer = f.read(24)
    except OSError as e:
        raise Refuse(f"{pack}: cannot read it ({e.strerror})")
    if size < 24:
        raise Refuse(f"{pack}: the object is {size} bytes, shorter than the 24-byte pack footer")
    m = re.fullmatch(rb"offsite-pack 2 ([0-9]{8})\n", footer)
    if not m:
        raise Refuse(f"{pack}: malformed pack footer")
    meta = int(m.group(1))
    if meta == 0 or meta + 24 >= size:
        raise Refuse(f"{pack}: the footer's META length {meta} leaves no room for DATA")
    return size - 24 - meta, meta


def trailer_entries(ctx, pack):
    """The signed packinfo of a pack's trailer (META), verified under its key."""
    data, meta = pack_layout(ctx, pack)
    with open(ctx.path(pack), "rb") as f:
        f.seek(data)
        raw = f.read(meta)
    plain = decode_object(ctx.work, raw, ctx.meta_ids, f"{pack} (trailer)", meta * 4 + 1024)
    body, _ = ctx.verifier.open(pack, plain)
    return parse_entries(body_lines(body, "offsite-packinfo 2", f"{pack} (trailer)"), pack)


def add_trailers(ctx, missing, where, data_len):
    """Chunks no index file names: looked for in the signed trailers of the
    packs no index file names (an interrupted backup's last packs)."""
    root = ctx.path("packs")
    for sub in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        for name in sorted(os.listdir(os.path.join(root, sub))):
            pack = f"packs/{sub}/{name}"
            if pack in data_len or not PACK_KEY.match(pack):
                continue
            try:
                add_packs({pack: trailer_entries(ctx, pack)}, where, data_len)
            except Refuse as e:
                warn(f"skipping the trailer of {pack}: {e}")
            if not any(m not in where for m in missing):
                return


def plan_pieces(ctx, state, files):
    """{pack: [(chunk id, pack offset, length, file number, file offset)]},
    each chunk taken from a copy no damage record names when there is one."""
    where, data_len = load_index(ctx)
    wanted = {c[0] for p in files for c in state[p][1]}
    missing = [c for c in wanted if c not in where]
    if missing:
        before = set(data_len)
        add_trailers(ctx, missing, where, data_len)
        found = sum(1 for c in missing if c in where)
        print(f"index: {len(missing)} chunks are in no signed index file; {found} found in the "
              f"signed trailers of {len(set(data_len) - before)} packs")
    damaged = load_damage(ctx)
    by_pack = {}
    for number, path in enumerate(files):
        at = 0
        for cid, length in state[path][1]:
            copies = where.get(cid)
            if not copies:
                raise Refuse(f"chunk {cid} of {path} is in no index file or pack trailer "
                             "(the repository copy is incomplete, or was pruned meanwhile)")
            # A copy whose pack is there and that no damage record names first.
            copies = sorted(copies, key=lambda c: (not os.path.isfile(ctx.path(c[0])),
                                                   (c[0], cid) in damaged))
            pack, off, have = copies[0]
            if have != length:
                raise Refuse(f"chunk {cid}: the list says {length} bytes, the index {have}")
            by_pack.setdefault(pack, []).append((cid, off, length, number, at))
            at += length
    return by_pack, data_len


def keyed_ids(chunk_key, pieces):
    """b3sum --keyed of each piece file, in order, K on standard input."""
    out = []
    for i in range(0, len(pieces), 1000):
        batch = pieces[i:i + 1000]
        text = run(["b3sum", "--keyed", "--no-names", *batch], chunk_key, "b3sum --keyed")
        out.extend(text.decode().split())
    return out


def fetch_pack(ctx, pack, pieces, data_len, chunk_key, dests):
    """Decodes one pack's DATA, checks every chunk wanted from it against its
    keyed id, and only then copies it into the files."""
    decoded = decode_pack_data(ctx, pack, data_len[pack])
    with open(decoded, "rb") as src:
        unique = {}
        for cid, off, length, _, _ in pieces:
            unique.setdefault(cid, (off, length))
        check_chunks(ctx, pack, src, unique, chunk_key)
        # The decoded DATA is this run's private file, unchanged since the check.
        outs = {n: open(dests[n], "r+b") for n in {p[3] for p in pieces}}
        try:
            for _, off, length, number, at in pieces:
                src.seek(off)
                outs[number].seek(at)
                outs[number].write(src.read(length))
        finally:
            for o in outs.values():
                o.close()
    os.unlink(decoded)


def decode_pack_data(ctx, pack, want):
    """The file holding pack's decoded DATA, exactly `want` bytes."""
    data, _ = pack_layout(ctx, pack)
    decoded = os.path.join(ctx.work, "pack.data")
    got, error = decode_to_file(ctx.path(pack), data, ctx.data_ids, decoded, pack, want)
    if error is not None:
        raise Refuse(f"{pack} is damaged: its data does not decode ({error}); this script "
                     "reads one copy of each chunk (the best the index files and damage "
                     "records name), offsite restore tries the others and other targets")
    if got != want:
        raise Refuse(f"{pack}: its data decodes to {got} bytes, its index says {want}")
    return decoded


def check_chunks(ctx, pack, src, unique, chunk_key):
    """Each chunk {id: (offset, length)} of the decoded DATA `src`, cut into
    a piece file, against its keyed BLAKE3 id (b3sum --keyed)."""
    scratch = tempfile.mkdtemp(prefix="pieces-", dir=ctx.scratch)
    try:
        names = []
        for n, (off, length) in enumerate(unique.values()):
            src.seek(off)
            names.append(os.path.join(scratch, str(n)))
            with open(names[-1], "wb") as f:
                f.write(src.read(length))
        for cid, have in zip(unique, keyed_ids(chunk_key, names)):
            if have != cid:
                raise Refuse(f"chunk {cid} in {pack} does not match its keyed BLAKE3 id (it is "
                             f"{have}): the pack is damaged; offsite restore tries other copies "
                             "and targets")
    finally:
        shutil.rmtree(scratch)


# ---------------------------------------------------------------- writing


def exists(p):
    return os.path.lexists(p)


class Output:
    """OUTPUT.partial (and OUTPUT.wal.partial) while writing; renamed at the end."""

    def __init__(self, out):
        self.out = out
        self.partial = out + ".partial"
        self.wal_partial = out + ".wal.partial"
        self.done = False

    def refuse_existing(self):
        for p in (self.out, self.partial, self.out + ".wal", self.wal_partial,
                  self.out + "-wal", self.out + "-shm", self.out + "-journal"):
            # A leftover -wal/.wal beside the output would be replayed onto the restored database.
            if exists(p):
                raise Refuse(f"{p} exists; move it away first (nothing was written)")

    def cleanup(self):
        if self.done:
            return
        for p in (self.partial, self.wal_partial):
            if os.path.isdir(p) and not os.path.islink(p):
                # Read-only directories of the snapshot must be writable again to remove them.
                for root, dirs, _ in os.walk(p):
                    for d in dirs:
                        full = os.path.join(root, d)
                        if not os.path.islink(full):
                            os.chmod(full, 0o700)
                os.chmod(p, 0o700)
                shutil.rmtree(p)
            elif exists(p):
                os.unlink(p)


def create(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)


def destinations(state, layout, files, output):
    """Where each file goes, by number; creates the directories (private
    until their modes are set at the end) and returns them with their modes."""
    if layout == "tree":
        os.mkdir(output.partial)
    os.umask(0o077)
    dests, dirs = [], []
    for number, path in enumerate(files):
        if layout == "tree":
            dests.append(os.path.join(output.partial, path))
        elif layout == "duckdb" and number == 1:
            dests.append(output.wal_partial)
        else:
            dests.append(output.partial)
    for path in sorted(state, key=canon_key):
        entry = state[path][0]
        if entry[0] == "D":
            os.mkdir(os.path.join(output.partial, path), 0o700)
            dirs.append((entry[1], os.path.join(output.partial, path)))
    return dests, dirs


def set_metadata(state, files, dests, dirs, output):
    """Sizes checked, then modes and mtimes, links, directory modes."""
    for number, path in enumerate(files):
        _, mode, size, mtime, _ = state[path][0]
        have = os.path.getsize(dests[number])
        if have != size:
            raise Refuse(f"{dests[number]} has {have} bytes, the list says {size}")
        # Mode 0 and mtime 0 mean "not recorded", as for offsite itself.
        if mtime > 0:
            os.utime(dests[number], (os.stat(dests[number]).st_atime, mtime))
        if mode & 0o7777:
            os.chmod(dests[number], mode & 0o7777)
    # Links after every file, so no write ever goes through one.
    for path in sorted(state, key=canon_key):
        entry = state[path][0]
        if entry[0] == "L":
            link = os.path.join(output.partial, path)
            if exists(link):
                raise Refuse(f"{link} exists already")
            os.symlink(entry[2], link)
    # Directories last and deepest first, so a read-only one is set after everything in it.
    for mode, d in reversed(dirs):
        if mode & 0o7777:
            os.chmod(d, mode & 0o7777)


def write_snapshot(ctx, state, layout, files, by_pack, data_len, chunk_key, output):
    dests, dirs = destinations(state, layout, files, output)
    for number, path in enumerate(files):
        create(dests[number])
        os.truncate(dests[number], state[path][0][2])
    for pack in sorted(by_pack):
        fetch_pack(ctx, pack, by_pack[pack], data_len, chunk_key, dests)
    set_metadata(state, files, dests, dirs, output)


def finish(output, layout):
    for p in (output.out, output.out + ".wal"):
        if exists(p):
            raise Refuse(f"{p} appeared meanwhile; nothing was put in place")
    # A database's .wal first, so the database appearing completes it.
    if layout == "duckdb" and exists(output.wal_partial):
        os.rename(output.wal_partial, output.out + ".wal")
    os.rename(output.partial, output.out)
    output.done = True


# ---------------------------------------------------------------- the restore


def scratch_dir(work):
    """Where chunk pieces are cut for b3sum: a RAM disk when there is one
    (thousands of small files a pack; one pack's worth at a time), else the
    work directory. Either way a private directory of this run."""
    for d in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            try:
                return tempfile.mkdtemp(prefix="offsite-v2-restore-", dir=d)
            except OSError:
                continue
    return work


class Context:
    def __init__(self, args, work, scratch):
        self.repo, self.work, self.verify = args.repo, work, not args.no_signatures
        self.scratch = scratch
        self.identity_file = args.identity
        self.owner_key_given = args.owner_key is not None
        self.keyset = None
        self.owners = set()
        self.writers = {}
        self.meta_ids = self.data_ids = None
        self.verifier = self.owner_verifier = None

    def path(self, key):
        return os.path.join(self.repo, *key.split("/"))

    def read(self, key):
        try:
            with open(self.path(key), "rb") as f:
                return f.read()
        except OSError as e:
            raise Refuse(f"cannot read {key} in {self.repo}: {e.strerror}")

    def trusted(self, signer, finished, key):
        """Refuses an object by a writer removed before `finished` (design 3.3)."""
        if not self.verify or signer in self.owners:
            return
        w = self.writers.get(signer)
        if w is None:
            raise Refuse(f"{key} is signed by {signer}, which this repository's owner never authorised")
        until = w.get("valid_until")
        if until is not None and finished > time_ns(until, "valid_until"):
            raise Refuse(f"{key}: signed by writer {w.get('name')} after it was removed "
                         f"(valid until {until})")


def read_config(ctx):
    try:
        config = json.loads(ctx.read("config"))
    except ValueError:
        raise Refuse(f"{ctx.repo}/config is not JSON")
    if config.get("format") != "offsite-repository" or config.get("version") != 2:
        raise Refuse(f"{ctx.repo}/config does not describe a format 2 offsite repository "
                     "(for format 1 use scripts/restore-without-offsite.sh)")
    keyset = config.get("keyset")
    if not isinstance(keyset, str) or not re.fullmatch(r"[0-9a-f]{32}", keyset):
        raise Refuse(f"{ctx.repo}/config: keyset is not 32 lowercase hex digits")
    return keyset


def read_manifest(ctx, snap, ring):
    key = f"snapshots/{snap}"
    raw = ctx.read(key)
    plain = decode_object(ctx.work, raw, ctx.meta_ids, key, MAX_MANIFEST)
    body, signer = ctx.verifier.open(key, plain)
    m = strict_json(body, key, MANIFEST_FIELDS, exact_order=True)
    compact = json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
    if compact != body:
        raise Refuse(f"{key}: not a format 2 manifest: it is not exactly as offsite writes it")
    if m["format"] != "offsite-snapshot" or m["version"] != 2:
        raise Refuse(f"{key}: not a format 2 manifest")
    check_manifest_types(m, key)
    if m["id"] != snap:
        raise Refuse(f"{key} holds the manifest of snapshot {m['id']}: a manifest is stored "
                     "under its own id")
    if not isinstance(m["list_blake3"], str) or not HEX64.match(m["list_blake3"]):
        raise Refuse(f"{key}: list_blake3 is not 64 lowercase hex digits")
    if m["kind"] not in ("sqlite", "duckdb", "files"):
        raise Refuse(f"snapshot {snap} is of kind \"{m['kind']}\", which this script cannot "
                     "restore (it knows sqlite, duckdb and files); use offsite")
    gen = m["generation"]
    if not isinstance(gen, int) or not 1 <= gen <= 9999:
        raise Refuse(f"{key}: generation is not 1 to 9999")
    if ctx.verify and gen > ring["generation"]:
        raise Refuse(f"{key} is not trusted: its generation {gen} is above the keyring's "
                     f"current one ({ring['generation']}): it claims a keyring newer than the one found")
    ctx.trusted(signer, time_ns(m["finished"], f"{key} finished"), key)
    time_ns(m["started"], f"{key} started")
    return m, signer


def check_manifest_types(m, key):
    """The field rules of manifest2.rs that JSON alone does not give."""
    def is_int(v, lo, hi):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
    for f in ("size", "files", "chunks", "new_bytes", "uploaded_bytes"):
        if not is_int(m[f], 0, 2**64 - 1):
            raise Refuse(f"{key}: {f} is not a count")
    for f in ("id", "source", "kind", "host", "writer", "started", "finished", "tool"):
        if not isinstance(m[f], str):
            raise Refuse(f"{key}: {f} is not a string")
    if not isinstance(m["tags"], list) or not all(isinstance(t, str) for t in m["tags"]):
        raise Refuse(f"{key}: tags is not a list of strings")
    if not is_snapshot_id(m["id"]):
        raise Refuse(f"{key}: id is not a snapshot id (<%Y%m%dT%H%M%SZ>-<8 hex>)")
    parent = m["parent"]
    if parent is not None and (not isinstance(parent, str) or not is_snapshot_id(parent)
                               or parent == m["id"]):
        raise Refuse(f"{key}: parent is not another snapshot's id")
    if not is_int(m["keyring"], 1, 99_999_999):
        raise Refuse(f"{key}: keyring is not a serial from 1 to 99999999")
    page = m["page_size"]
    if m["kind"] == "sqlite":
        ok = is_int(page, 512, 65536) and page & (page - 1) == 0
    else:
        ok = page is None
    if not ok:
        raise Refuse(f"{key}: page_size is not a SQLite page size (or is set for another kind)")


def refuse_early(args, ctx, output):
    """What can be refused before any key is used: a bad snapshot id, an
    output in the way, a missing output directory."""
    if not re.fullmatch(r"[^/.][^/]*", args.snapshot):
        raise Refuse(f"{args.snapshot} is not a snapshot id (see: ls {args.repo}/snapshots/)")
    if not os.path.isfile(ctx.path(f"snapshots/{args.snapshot}")):
        raise Refuse(f"no snapshot {args.snapshot} in {args.repo} (see: ls {args.repo}/snapshots/)")
    output.refuse_existing()
    if not os.path.isdir(os.path.dirname(output.out)):
        raise Refuse(f"{os.path.dirname(output.out)} is not a directory: create it first "
                     "(nothing was written)")


def open_keys(ctx, args, ids):
    """Steps 1 and 2: the owner key (given, or derived from the identity),
    the keyring it signed, and the checked bundle of the first identity
    the keyring lists. Sets the verifiers and scratch identities of `ctx`;
    returns the keyring and the chunk key K."""
    if args.owner_key is not None:
        owner = bech32_decode(args.owner_key, "offsite-owner", 32, "--owner-key")
        ctx.owners = {bech32_encode("offsite-owner", owner)}
    elif ctx.verify:
        ctx.owners = {owner_public_of(i) for i in ids}
    ctx.owner_verifier = Verifier(ctx.work, ctx.keyset, ctx.owners, ctx.verify)
    ring = open_keyring(ctx)
    signed = f"signed by {ring['owner']}" if ctx.verify else "NOT VERIFIED"
    print(f"keyring: keyring/{ring['serial']:08}, {signed}")
    ctx.owners = {ring["owner"]} if ctx.verify else set()
    ctx.writers = {w.get("key"): w for w in ring["writers"]}
    ctx.verifier = Verifier(ctx.work, ctx.keyset, ctx.owners | set(ctx.writers), ctx.verify)
    for identity in ids:
        try:
            ctx.meta_ids, chunk_key = open_bundle(ctx, ring, identity)
            ctx.data_ids = ctx.meta_ids
            return ring, chunk_key
        except Refuse as e:
            if identity == ids[-1]:
                raise
            warn(str(e))


def restore(args, work, scratch):
    ctx = Context(args, work, scratch)
    output = Output(os.path.abspath(args.output))
    refuse_early(args, ctx, output)
    ctx.keyset = read_config(ctx)
    ring, chunk_key = open_keys(ctx, args, identity_lines(args.identity))
    manifest, signer = read_manifest(ctx, args.snapshot, ring)
    signed = f"signed by {signer}" if ctx.verify else "NOT VERIFIED"
    print(f"manifest: snapshots/{args.snapshot} ({manifest['kind']} of {manifest['source']}), "
          f"{signed}")
    state = rebuild_list(ctx, manifest)
    layout = check_paths(state, manifest["kind"])
    files = [p for p in sorted(state, key=canon_key) if state[p][0][0] == "F"]
    by_pack, data_len = plan_pieces(ctx, state, files)
    try:
        write_snapshot(ctx, state, layout, files, by_pack, data_len, chunk_key, output)
        finish(output, layout)
    finally:
        output.cleanup()
    return manifest


def main():
    p = argparse.ArgumentParser(
        prog="restore-without-offsite-v2.py",
        description="Restore a snapshot of a format 2 offsite repository with stock tools.")
    p.add_argument("repo", metavar="REPO_DIR")
    p.add_argument("snapshot", metavar="SNAPSHOT_ID")
    p.add_argument("identity", metavar="IDENTITY_FILE")
    p.add_argument("output", metavar="OUTPUT")
    p.add_argument("--owner-key", metavar="offsite-owner1...",
                   help="the owner key; needed when IDENTITY_FILE is not the owner's")
    p.add_argument("--no-signatures", action="store_true",
                   help="skip every signature check: the restore is UNAUTHENTICATED")
    args = p.parse_args()
    loud = ("WARNING: --no-signatures: no signature is checked. This restore is UNAUTHENTICATED: "
            "anyone with write access to the repository could have forged what it writes.")
    if args.no_signatures:
        warn(loud)
    # SystemExit unwinds like any exception, so what was written is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="offsite-v2-restore-")
    scratch = scratch_dir(work)
    try:
        require_tools(not args.no_signatures)
        manifest = restore(args, work, scratch)
    except Refuse as e:
        warn(str(e))
        sys.exit(1)
    except OSError as e:
        warn(f"{e}; nothing was put in place")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    how = "UNAUTHENTICATED (--no-signatures)" if args.no_signatures else "signatures verified"
    print(f"restored {manifest['id']} ({manifest['kind']}) to {args.output} "
          f"(list_blake3 {manifest['list_blake3']}, {how})")
    if args.no_signatures:
        warn(loud)


if __name__ == "__main__":
    main()
