#!/bin/sh
# Restores a snapshot from an offsite repository with nothing but a POSIX
# shell, age, zstd, awk and GNU coreutils (dd, sha256sum, touch): the procedure
# of docs/format.md, for the day offsite itself is not available.
#
# usage: restore-without-offsite.sh REPO_DIR SNAPSHOT_ID IDENTITY_FILE OUTPUT
#   REPO_DIR  a local copy of the repository (for a bucket: aws s3 sync,
#             gsutil rsync or b2 sync the target's prefix to a directory first)
#   OUTPUT    must not exist. A sqlite snapshot becomes the database OUTPUT; a
#             duckdb one the database OUTPUT and, when the snapshot has one, its
#             write-ahead log OUTPUT.wal (DuckDB replays it on open); a files
#             snapshot of a directory the directory OUTPUT, with modes, mtimes
#             and symlinks (a files snapshot of one file: the file OUTPUT).
#
# It trusts nothing the repository says about paths: a path that is absolute,
# has a "." or ".." component or a control character, or whose parent is not
# a directory of the snapshot, is refused before anything is written; links
# are created after every file, so no write ever goes through one. Everything
# is written under OUTPUT.partial (OUTPUT.wal.partial) and renamed into place
# only once the SHA-256 of the whole snapshot matches its manifest. Any failure
# exits non-zero, removes what it wrote, and leaves OUTPUT absent.
#
# A format 2 repository (its config says "version": 2) is handed over, with
# the same arguments, to restore-without-offsite-v2.py beside this script
# (Python 3, age, zstd, b3sum, openssl; it also takes --owner-key and
# --no-signatures): format 2 is signed, and checking that needs more than
# a POSIX shell.
set -eu
if [ $# -ge 1 ] && [ -f "$1/config" ] \
  && grep -Eq '"version"[[:space:]]*:[[:space:]]*2[[:space:]]*[,}]' "$1/config"; then
  v2="$(dirname -- "$0")/restore-without-offsite-v2.py"
  command -v python3 >/dev/null 2>&1 || {
    echo "restore-without-offsite: $1 is a format 2 repository, restored by $v2, which needs python3 (apt-get install python3)" >&2
    exit 1
  }
  exec python3 "$v2" "$@"
fi
[ $# -eq 4 ] || { echo "usage: $0 REPO_DIR SNAPSHOT_ID IDENTITY_FILE OUTPUT" >&2; exit 2; }
repo=$1 snap=$2 key=$3 out=$4
export LC_ALL=C

die() { echo "restore-without-offsite: $*" >&2; exit 1; }
exists() { [ -e "$1" ] || [ -L "$1" ]; }

case $snap in */*|.*|'') die "$snap is not a snapshot id (see: ls $repo/snapshots/)";; esac
[ -f "$repo/snapshots/$snap" ] || die "no snapshot $snap in $repo (see: ls $repo/snapshots/)"
for p in "$out" "$out.partial" "$out.wal" "$out.wal.partial" "$out-wal" "$out-shm" "$out-journal"; do
  # A leftover -wal/.wal beside the output would be replayed onto the restored database.
  ! exists "$p" || die "$p exists; move it away first (nothing was written)"
done

work=$(mktemp -d)
done_ok=""
# OUTPUT.partial and OUTPUT.wal.partial did not exist (checked above): what
# is there when the script fails is its own.
cleanup() {
  if [ -z "$done_ok" ]; then
    for p in "$out.partial" "$out.wal.partial"; do
      # Read-only directories of the snapshot must be writable again to remove them.
      if [ -d "$p" ] && [ ! -L "$p" ]; then find "$p" -type d -exec chmod u+rwx {} +; fi
      rm -rf -- "$p"
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Every object is zstd-compressed, then age-encrypted.
dec() { age -d -i "$key" "$1" | zstd -d -q; }

dec "$repo/snapshots/$snap" > "$work/manifest.json" || die "cannot decode snapshots/$snap"
field() { sed -n "s/^ *\"$1\": *\"\([^\"]*\)\",\{0,1\}\$/\1/p" "$work/manifest.json"; }
list=$(field list) sha=$(field sha256) kind=$(field kind)
case $kind in
  sqlite|duckdb|files) ;;
  *) die "snapshot $snap is of kind \"$kind\", which this script cannot restore (it knows sqlite, duckdb and files); use offsite" ;;
esac
case $list in
  lists/*/*|*..*) die "the manifest names an unsafe list key \"$list\"" ;;
  lists/?*) ;;
  *) die "the manifest names no list" ;;
esac
dec "$repo/$list" > "$work/list" || die "cannot decode $list"
# An index file or damage record that does not decode (empty, junk) is
# passed over, as offsite does: it can only matter to chunks it alone names.
decode_all() { # prefix, output
  : > "$2"
  for f in "$repo/$1"/*; do
    [ -f "$f" ] || continue
    if dec "$f" > "$work/one" 2>/dev/null; then
      cat "$work/one" >> "$2"
    else
      echo "restore-without-offsite: skipping $1/${f##*/}: it does not decode" >&2
    fi
  done
}
decode_all index "$work/index"
# Damage records name pack copies of chunks found damaged: another copy is preferred.
decode_all damaged "$work/damaged"

# Check the list and join it with the index into a plan, one record a line,
# paths decoded on lines of their own:
#   F <mode> <mtime> <size>, then its path, then its pieces "C <pack> <offset> <length>"
#   D <mode>, then its path
#   L, then its path, then its target
# and list.layout (single, duckdb or tree) and list.packs (the packs it needs).
awk -v kind="$kind" '
function bad(msg) { print "restore-without-offsite: " msg > "/dev/stderr"; failed = 1; exit 1 }
function decode(s,   o, i, c, h, v) {
  o = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (c != "%") { o = o c; continue }
    h = toupper(substr(s, i + 1, 2))
    if (!(h in hexval)) bad("line " FNR ": malformed percent-encoding in " s)
    v = hexval[h]
    if (v < 32 || v == 127) bad("line " FNR ": control character in the name " s)
    o = o chr[v]; i += 2
  }
  if (o == "") bad("line " FNR ": empty name")
  return o
}
function safe(p, what,   n, parts, i, parent) {
  if (substr(p, 1, 1) == "/") bad("unsafe " what " path " p ": absolute")
  n = split(p, parts, "/")
  for (i = 1; i <= n; i++)
    if (parts[i] == "" || parts[i] == "." || parts[i] == "..") bad("unsafe " what " path " p)
  if (p in seen) bad("path " p " is listed twice")
  seen[p] = 1
  parent = p; sub(/\/[^\/]*$/, "", parent)
  if (parent != p && !(parent in dirs))
    bad("unsafe " what " path " p ": its parent is not a directory of the snapshot (never written through a link)")
}
function flush() {
  if (plen > 0) { print "C " ppack " " poff " " plen; plen = 0; packs[ppack] = 1 }
}
function end_file() {
  flush()
  if (infile && got != want) bad("file " fpath ": its chunks hold " got " bytes, its size is " want)
  infile = 0
}
BEGIN {
  for (i = 0; i < 256; i++) { hexval[sprintf("%02X", i)] = i; chr[i] = sprintf("%c", i) }
}
FILENAME == ARGV[1] {
  if ($0 == "offsite-damaged 1") { dpack = ""; next }
  if ($1 == "P") { dpack = $2; next }
  if (NF == 1 && length($1) == 64 && dpack != "") dmg[dpack " " $1] = 1
  next
}
FILENAME == ARGV[2] {
  if (FNR == 1 && $0 != "offsite-index 1") bad("an index file has an unknown header")
  if ($0 == "offsite-index 1") { pack = ""; next }
  if ($1 == "P") {
    if ($2 !~ /^packs\/[0-9a-f][0-9a-f]\/[0-9a-f]+$/) bad("the index names an unsafe pack key " $2)
    pack = $2; next
  }
  if (NF == 3 && length($1) == 64 && pack != "") {
    here = ((pack " " $1) in dmg)
    if (!($1 in loc) || (locdmg[$1] && !here)) { loc[$1] = pack " " $2 " " $3; locdmg[$1] = here }
  }
  next
}
FNR == 1 { if ($0 != "offsite-list 1") bad("the list has an unknown header"); next }
$1 == "F" && NF == 5 {
  end_file()
  if ($2 !~ /^[0-7]+$/ || length($2) > 4) bad("line " FNR ": bad mode " $2)
  if ($3 !~ /^[0-9]+$/) bad("line " FNR ": bad size " $3)
  if ($4 !~ /^-?[0-9]+$/) bad("line " FNR ": bad mtime " $4)
  fpath = decode($5); safe(fpath, "file")
  nfiles++; if (nfiles == 1) first = fpath; if (nfiles == 2) second = fpath
  print "F " $2 " " $4 " " $3; print fpath
  infile = 1; want = $3 + 0; got = 0; next
}
$1 == "D" && NF == 3 {
  end_file()
  if ($2 !~ /^[0-7]+$/ || length($2) > 4) bad("line " FNR ": bad mode " $2)
  p = decode($3); safe(p, "directory"); dirs[p] = 1; ndirs++
  print "D " $2; print p; next
}
$1 == "L" && NF == 3 {
  end_file()
  p = decode($2); safe(p, "link"); nlinks++
  print "L"; print p; print decode($3); next
}
NF == 2 && length($1) == 64 {
  if (!infile) bad("line " FNR ": a chunk outside a file")
  if (!($1 in loc)) bad("chunk " $1 " is in no index file")
  split(loc[$1], l, " ")
  if (l[3] != $2) bad("chunk " $1 ": the list says " $2 " bytes, the index " l[3])
  got += $2
  if (plen > 0 && l[1] == ppack && l[2] + 0 == poff + plen) { plen += l[3]; next }
  flush(); ppack = l[1]; poff = l[2] + 0; plen = l[3] + 0; next
}
{ bad("line " FNR " of the list is not understood: " $0) }
END {
  if (failed) exit 1
  end_file()
  if (failed) exit 1
  if (kind == "sqlite" && (nfiles != 1 || ndirs + nlinks > 0)) bad("a sqlite snapshot must be one file")
  if (kind == "duckdb" && (nfiles < 1 || nfiles > 2 || ndirs + nlinks > 0 || (nfiles == 2 && second != first ".wal")))
    bad("a duckdb snapshot must be the database and at most its .wal")
  layout = "tree"
  if (kind == "duckdb") layout = "duckdb"
  else if (nfiles == 1 && ndirs + nlinks == 0) layout = "single"
  print layout > (FILENAME ".layout")
  printf "" > (FILENAME ".packs")
  for (p in packs) print p > (FILENAME ".packs")
}' "$work/damaged" "$work/index" "$work/list" > "$work/plan"
layout=$(cat "$work/list.layout")

# Decode each pack the plan needs once.
while read -r pack; do
  dec "$repo/$pack" > "$work/${pack##*/}" || die "cannot decode $pack"
done < "$work/list.packs"

# Write every file and directory; links and modes come after the checksum.
# The output directory gets the usual mode (as offsite gives it); what is in
# it stays private until its own mode is set, after the checksum.
[ "$layout" != tree ] || mkdir -- "$out.partial"
umask 077
dest_of() { # file number, path
  case $layout in
    tree) printf '%s/%s' "$out.partial" "$2" ;;
    duckdb) if [ "$1" = 1 ]; then printf '%s' "$out.partial"; else printf '%s' "$out.wal.partial"; fi ;;
    single) printf '%s' "$out.partial" ;;
  esac
}
: > "$work/files"; : > "$work/dirs"; : > "$work/links"
n=0 dest=""
while IFS= read -r rec; do
  case $rec in
    "F "*)
      set -- $rec
      IFS= read -r path
      n=$((n + 1))
      dest=$(dest_of "$n" "$path")
      (set -C; : > "$dest") || die "cannot create $dest"
      printf '%s %s %s\n%s\n' "$2" "$3" "$4" "$dest" >> "$work/files" ;;
    "C "*)
      set -- $rec
      dd if="$work/${2##*/}" iflag=skip_bytes,count_bytes skip="$3" count="$4" bs=65536 status=none < /dev/null >> "$dest" ;;
    "D "*)
      set -- $rec
      IFS= read -r path
      mkdir -- "$out.partial/$path"
      printf '%s\n%s\n' "$2" "$out.partial/$path" >> "$work/dirs" ;;
    L)
      IFS= read -r path
      IFS= read -r target
      printf '%s\n%s\n' "$out.partial/$path" "$target" >> "$work/links" ;;
    *) die "internal error: plan line $rec" ;;
  esac
done < "$work/plan"

# Each file's size, then the SHA-256 of the snapshot: every file's contents, in list order.
while read -r mode mtime size && IFS= read -r f; do
  have=$(wc -c < "$f")
  [ "$have" -eq "$size" ] || die "$f has $have bytes, the list says $size"
done < "$work/files"
got=$(while read -r mode mtime size && IFS= read -r f; do cat -- "$f"; done < "$work/files" \
  | sha256sum | cut -d' ' -f1)
[ "$got" = "$sha" ] || die "checksum mismatch: the restored data's SHA-256 is $got, the manifest says $sha"

# Mode 0 means "not recorded", as for offsite itself.
while read -r mode mtime size && IFS= read -r f; do
  if [ "$mtime" -gt 0 ]; then touch -m -d "@$mtime" -- "$f"; fi
  case $mode in *[1-7]*) chmod "$mode" -- "$f" ;; esac
done < "$work/files"
while IFS= read -r link && IFS= read -r target; do
  ! exists "$link" || die "$link exists already"
  ln -s -- "$target" "$link"
done < "$work/links"
# Directories last and deepest first (the list has parents first), so that a
# read-only one is set after everything in it.
awk 'NR % 2 { m[++n] = $0; next } { d[n] = $0 } END { for (i = n; i > 0; i--) { print m[i]; print d[i] } }' \
  "$work/dirs" | while read -r mode && IFS= read -r d; do
  case $mode in *[1-7]*) chmod "$mode" -- "$d" ;; esac
done

# Into place: a database's .wal first, so the database appearing completes it.
for p in "$out" "$out.wal"; do ! exists "$p" || die "$p appeared meanwhile; the restored copy is left at $p.partial"; done
if [ "$layout" = duckdb ] && [ -e "$out.wal.partial" ]; then mv -- "$out.wal.partial" "$out.wal"; fi
mv -- "$out.partial" "$out"
done_ok=1
echo "restored $snap ($kind) to $out (sha256 $sha)"
