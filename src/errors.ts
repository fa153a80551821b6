import { isNativeError } from './bpf/addon.js';

/** One line for logs and metric reasons: the message plus libbpf's last words when the addon has them. */
export function describeError(err: unknown): string {
  if (isNativeError(err) && err.libbpfMessage) {
    const tail = err.libbpfMessage.trim().split('\n').slice(-3).join(' | ');
    return `${err.message} (libbpf: ${tail})`;
  }
  return err instanceof Error ? err.message : String(err);
}
