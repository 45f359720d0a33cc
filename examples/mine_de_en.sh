#!/usr/bin/env bash
# Mine German-English sentence pairs from two small unaligned files with the default model.
# Usage: examples/mine_de_en.sh [--model DIR] [emmax mine options...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=()
if [ "${1:-}" = "--model" ]; then model=(--model "$2"); shift 2; fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
emmax --quiet embed "$here/sentences.de.txt" --lang de -o "$out/de.parquet" "${model[@]}"
emmax --quiet embed "$here/sentences.en.txt" --lang en -o "$out/en.parquet" "${model[@]}"
emmax --quiet mine --src de --tgt en "$out/de.parquet" "$out/en.parquet" "${model[@]}" "$@"
