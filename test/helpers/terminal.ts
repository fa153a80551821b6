// A real terminal for TUI tests: a tmux server of this process alone (its
// own socket), one session running a plain shell, keys sent and the screen
// read back as text.
import { execChecked, execCommand } from './proc.js';
import { waitFor } from './wait.js';

/** One tmux session; `session` names it in this process's tmux server. */
export class Terminal {
  private readonly socket = `pp-tui-${process.pid}`;
  constructor(readonly session: string) {}
  tmux(...args: string[]): Promise<string> {
    return execChecked('tmux', ['-L', this.socket, '-f', '/dev/null', ...args]);
  }
  async start(width: number, height: number): Promise<void> {
    await this.tmux('-u', 'new-session', '-d', '-s', this.session, '-x', String(width), '-y', String(height), '-e', 'LANG=C.UTF-8', '-e', 'PS1=$ ', 'bash --norc --noprofile');
  }
  type(text: string): Promise<string> {
    return this.tmux('send-keys', '-t', this.session, '-l', text);
  }
  key(...keys: string[]): Promise<string> {
    return this.tmux('send-keys', '-t', this.session, ...keys);
  }
  async screen(): Promise<string[]> {
    return (await this.tmux('capture-pane', '-p', '-t', this.session)).replace(/\n$/, '').split('\n');
  }
  async alternateScreen(): Promise<boolean> {
    return (await this.tmux('display-message', '-p', '-t', this.session, '#{alternate_on}')).trim() === '1';
  }
  async waitForScreen(what: string, predicate: (lines: string[]) => boolean, timeoutMs = 15_000): Promise<string[]> {
    let last: string[] = [];
    try {
      return await waitFor(async () => {
        last = await this.screen();
        return predicate(last) && last;
      }, { timeoutMs, intervalMs: 200, what });
    } catch (err) {
      throw new Error(`${(err as Error).message}; the screen:\n${last.join('\n')}`);
    }
  }
  /** Ends the session and what runs in it; the server exits with its last session. */
  async stop(): Promise<void> {
    await execCommand('tmux', ['-L', this.socket, 'kill-session', '-t', this.session]);
  }
}
