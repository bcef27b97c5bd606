// Column widths of the CLI's plain-text tables (`berth leases`, `berth cluster …`).

/**
 * The widest cell of each column. A reduce, not Math.max(...cells): a spread of 125,000 rows into one call
 * overflows the stack (`berth leases` of a full /15).
 */
export function columnWidths(rows: readonly (readonly string[])[]): number[] {
  return (rows[0] ?? []).map((_, i) => rows.reduce((w, r) => Math.max(w, r[i]?.length ?? 0), 0));
}
