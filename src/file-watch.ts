// Files the agent follows on disk (TLS material, the security rule file):
// a file-system watch of their directories, which misses some atomic renames
// (a Kubernetes Secret or ConfigMap swaps a symlinked directory), and a
// periodic check besides. check() compares contents itself; it is called
// often and must be cheap when nothing changed.
import { watch, type FSWatcher } from 'node:fs';
import path from 'node:path';

/** Calls check() after a change in a directory of files and every intervalMs; the returned function stops. */
export function watchFiles(files: readonly string[], intervalMs: number, check: () => void): () => void {
  const timer = setInterval(check, intervalMs).unref();
  const watchers: FSWatcher[] = [];
  for (const dir of new Set(files.map((f) => path.dirname(f)))) {
    try {
      watchers.push(watch(dir, { persistent: false }, () => setTimeout(check, 50).unref()));
    } catch {
      // The periodic check still runs.
    }
  }
  return () => {
    clearInterval(timer);
    for (const w of watchers) w.close();
  };
}
