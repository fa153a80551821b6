// Runs a collector's map operations (read, delete, attach, detach) one at a
// time, so retiring kernel entries never races a read. A failed task does
// not block the ones after it.
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(task: () => Promise<T>): Promise<T> {
    const run = this.tail.then(task, task);
    this.tail = run.catch(() => undefined);
    return run;
  }
}
