// Placeholder entry for the admin CLI.
export function main(): void {
  process.exitCode = 1;
}
