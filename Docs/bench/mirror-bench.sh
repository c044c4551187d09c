#!/usr/bin/env bash
# Forwarding TAP to TAP with mirroring off, to a pcap file, and to a pcap file through a BPF
# filter that matches nothing, interleaved round by round with Docs/bench/netbench.py (case
# tap-tap). Prints the summary (ratios to mirror off); raw lines go to $1 (default
# mirror.jsonl). Run as root from the repository root.
set -euo pipefail
out=${1:-mirror.jsonl}
rounds=${ROUNDS:-3}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pcap=$dir/mirror.pcap
: >"$out"
for ((r = 1; r <= rounds; r++)); do
	Docs/bench/netbench.py -r 1 -o "$dir/off.jsonl" tap-tap >/dev/null
	Docs/bench/netbench.py -r 1 -o "$dir/file.jsonl" -x "--mirror $pcap" --tag mirror-file tap-tap >/dev/null
	rm -f "$pcap"
	# a filter without spaces: -x splits on whitespace
	Docs/bench/netbench.py -r 1 -o "$dir/filter.jsonl" -x "--mirror $pcap --mirror-filter=arp&&ether[0]=0x77" --tag mirror-filter-none tap-tap >/dev/null
	rm -f "$pcap"
	cat "$dir/off.jsonl" "$dir/file.jsonl" "$dir/filter.jsonl" >>"$out"
done
Docs/bench/netbench.py --summarize "$out"
