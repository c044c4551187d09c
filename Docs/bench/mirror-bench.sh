#!/usr/bin/env bash
# Forwarding with mirroring off, to a pcap file, and to a pcap file through a BPF filter that
# matches nothing, measured in one session with ../shared/bench/netbench.sh (cmd mode),
# interleaved round by round. Prints the medians table; raw lines go to $1 (default
# mirror.jsonl). Run as root from the repository root after `swift build -c release`.
set -euo pipefail
out=${1:-mirror.jsonl}
rounds=${ROUNDS:-3}
bench=${NETBENCH:-../shared/bench/netbench.sh}
tb="$PWD/.build/release/tapbridge"
pcap=$(mktemp -d)/mirror.pcap
trap 'rm -rf "$(dirname "$pcap")"' EXIT
declare -A variants=(
	[mirror-off]=""
	[mirror-file]="--mirror $pcap"
	[mirror-filter-none]="--mirror $pcap --mirror-filter 'udp port 9'"
)
: >"$out"
for ((r = 1; r <= rounds; r++)); do
	for v in mirror-off mirror-file mirror-filter-none; do
		BRIDGE_CMD="$tb --port {tap0} --port {tap1} ${variants[$v]}" bash "$bench" -r 1 -t 5 cmd 2>/dev/null |
			jq -c --arg v "$v" --argjson r "$r" '.mode = $v | .run = $r' >>"$out"
		rm -f "$pcap"
	done
done
bash "$bench" summarize "$out"
