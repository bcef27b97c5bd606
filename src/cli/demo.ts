// placeholder, replaced below
export async function runDemo(_o: { reference: boolean; out(s: string): void; err(s: string): void }): Promise<number> {
  return 1;
}
