// The rollback of a failed ADD: steps push their inverse as they succeed; on failure the inverses run
// newest first, each failure logged and the rest still run, and the original error is what surfaces.
export type UndoStep = { what: string; run: () => Promise<void> };

export class UndoStack {
  private readonly steps: UndoStep[] = [];

  push(what: string, run: () => Promise<void>): void {
    this.steps.push({ what, run });
  }

  /** Runs every inverse, newest first; returns the failures (already logged through `log`). */
  async unwind(log: (line: string) => void): Promise<string[]> {
    const failures: string[] = [];
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.run();
      } catch (err) {
        const line = `rollback: ${step.what} failed: ${(err as Error).message}`;
        failures.push(line);
        log(line);
      }
    }
    return failures;
  }
}
