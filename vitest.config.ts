import { defineConfig } from 'vitest/config';

// Two projects: `unit` runs anywhere as any user; `root` needs root and creates real namespaces,
// links and nftables tables (each test names them with its own unique prefix and removes them).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/**/*.test.ts'],
          exclude: ['test/**/*.root.test.ts'],
        },
      },
      {
        test: {
          name: 'root',
          include: ['test/**/*.root.test.ts'],
          testTimeout: 60_000,
          hookTimeout: 60_000,
          // Kernel tests share one machine: run files one after another to keep timings sane.
          fileParallelism: false,
        },
      },
    ],
  },
});
