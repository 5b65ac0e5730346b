// How each bench file runs when it is the script node started (`node dist/bench/x.js`), and stays quiet when imported.

/** Runs `main` when `moduleUrl` is the script node was started with; a failure is printed as `bench <name>: …`, exit 1. */
export function runIfMain(moduleUrl: string, name: string, main: () => Promise<void>): void {
  if (!process.argv[1] || moduleUrl !== `file://${process.argv[1]}`) return;
  main().catch((e) => {
    process.stderr.write(`bench ${name}: ${(e as Error).stack}\n`);
    process.exitCode = 1;
  });
}
