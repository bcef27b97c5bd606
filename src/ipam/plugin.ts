// Placeholder entry until the plugin lands; replaced by a handler table on src/cni-spec/dispatch.
export function main(): void {
  process.exitCode = 1;
}
