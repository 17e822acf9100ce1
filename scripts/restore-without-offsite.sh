#!/bin/sh
# Restores a SQLite (or single-file) snapshot from an offsite repository with
# nothing but age, zstd, awk, dd and sha256sum: the procedure of docs/format.md,
# for the day offsite itself is not available.
#
# usage: restore-without-offsite.sh REPO_DIR SNAPSHOT_ID IDENTITY_FILE OUTPUT
#   REPO_DIR  a local copy of the repository (for a bucket: aws s3 sync,
#             gsutil rsync or b2 sync the target's prefix to a directory first)
set -eu
[ $# -eq 4 ] || { echo "usage: $0 REPO_DIR SNAPSHOT_ID IDENTITY_FILE OUTPUT" >&2; exit 2; }
repo=$1 snap=$2 key=$3 out=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# Every object is zstd-compressed, then age-encrypted.
dec() { age -d -i "$key" "$1" | zstd -d -q; }

dec "$repo/snapshots/$snap" > "$work/manifest.json"
field() { sed -n "s/^ *\"$1\": *\"\([^\"]*\)\",\{0,1\}\$/\1/p" "$work/manifest.json"; }
list=$(field list)
sha=$(field sha256)
dec "$repo/$list" > "$work/list"
for f in "$repo"/index/*; do dec "$f"; done > "$work/index"

# Index lines "P <pack>" then "<id> <offset> <length>"; list chunk lines are
# "<id> <length>". Join them into "<pack> <offset> <length>" in list order.
awk 'FNR == NR { if ($1 == "P") pack = $2; else if (NF == 3) loc[$1] = pack " " $2 " " $3; next }
     NF == 2 && length($1) == 64 {
       if (!($1 in loc)) { print "chunk " $1 " is in no index file" > "/dev/stderr"; exit 1 }
       print loc[$1]
     }' "$work/index" "$work/list" > "$work/plan"

# Decode each pack once, then copy the chunks out in order.
cut -d' ' -f1 "$work/plan" | sort -u | while read -r pack; do
  dec "$repo/$pack" > "$work/$(basename "$pack")"
done
while read -r pack off len; do
  dd if="$work/$(basename "$pack")" iflag=skip_bytes,count_bytes skip="$off" count="$len" bs=65536 status=none
done < "$work/plan" > "$out.partial"

echo "$sha  $out.partial" | sha256sum -c --status - || { echo "checksum mismatch: $out.partial is not the snapshot" >&2; exit 1; }
mv "$out.partial" "$out"
echo "restored $snap to $out (sha256 $sha)"
