# Sourced by end-to-end scripts that run the reference plugins with ipMasq: the reference masquerades through
# iptables (iptables-nft on Debian 12), and its last DEL removes its CNI-* chains but leaves the `nat` table
# with its empty built-in chain behind. nft_tables_now lists the tables; remove_new_empty_nft_tables deletes
# those not in an earlier listing that hold no rule (the rule bench/bridge/cnitool.js applies).
nft_tables_now() { nft list tables 2>/dev/null | sort; }

remove_new_empty_nft_tables() { # an earlier nft_tables_now [only tables of this name, e.g. nat]
  local before="$1" only="${2:-}" line family name
  while read -r line; do
    [ -n "$line" ] || continue
    grep -qxF -- "$line" <<<"$before" && continue
    read -r _ family name <<<"$line"
    [ -z "$only" ] || [ "$name" = "$only" ] || continue
    nft -j list table "$family" "$name" 2>/dev/null | grep -q '"rule"' && continue
    nft delete table "$family" "$name" 2>/dev/null
  done < <(nft_tables_now)
}
