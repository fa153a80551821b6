// Static bearer tokens (auth.mode=tokens): YAML files of {name, token, role,
// namespaces}, re-read when they change so a token can be revoked without a
// restart. Tokens are kept as SHA-256 digests and compared by digest.
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { ConfigError } from '../config.js';
import { roles, type Principal, type Role } from './principal.js';

export function tokenDigest(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** Kubernetes namespace names (RFC 1123 labels). */
const namespacePattern = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** The principals of one token file, by token digest; throws ConfigError naming the file and entry. */
export function parseTokenFile(file: string, text: string): Map<string, Principal> {
  const key = `auth.tokenFiles (${file})`;
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new ConfigError(key, `not valid YAML: ${(err as Error).message}`);
  }
  const entries = (doc as { tokens?: unknown } | null)?.tokens;
  if (!Array.isArray(entries)) throw new ConfigError(key, 'expected a mapping with a "tokens" list of {name, token, role, namespaces}');
  const out = new Map<string, Principal>();
  entries.forEach((entry: unknown, i) => {
    const at = `${key} tokens[${i}]`;
    const { name, token, role, namespaces, ...rest } = (entry ?? {}) as Record<string, unknown>;
    const unknown = Object.keys(rest);
    if (unknown.length) throw new ConfigError(at, `unknown key "${unknown[0]}"; allowed keys: name, token, role, namespaces`);
    if (typeof name !== 'string' || !name) throw new ConfigError(`${at}.name`, 'expected a non-empty string');
    // The token is a secret: its value is never echoed.
    if (typeof token !== 'string' || token.length < 16) throw new ConfigError(`${at}.token`, 'expected a string of at least 16 characters');
    if (typeof role !== 'string' || !(roles as readonly string[]).includes(role)) throw new ConfigError(`${at}.role`, `got ${JSON.stringify(role)}, allowed values: ${roles.join(', ')}`);
    if (namespaces !== undefined && (!Array.isArray(namespaces) || namespaces.length === 0 || !namespaces.every((n) => typeof n === 'string' && namespacePattern.test(n)))) {
      throw new ConfigError(`${at}.namespaces`, 'expected a non-empty list of namespace names (absent: every namespace)');
    }
    const digest = tokenDigest(token);
    if (out.has(digest)) throw new ConfigError(`${at}.token`, 'the same token is listed twice');
    out.set(digest, { name, kind: 'token', role: role as Role, ...(namespaces ? { namespaces: namespaces as string[] } : {}) });
  });
  return out;
}

/** The tokens of every file, checked again (by modification time and size) at most once a second. */
export class TokenStore {
  private tokens = new Map<string, Principal>();
  private stamps = '';
  private checkedAt = 0;

  constructor(
    private readonly files: readonly string[],
    private readonly onError: (err: Error) => void,
  ) {
    if (!files.length) throw new ConfigError('auth.tokenFiles', 'auth.mode=tokens needs at least one token file');
    // At start a bad file is fatal; later the last good tokens stay.
    this.load();
  }

  lookup(token: string): Principal | undefined {
    const now = Date.now();
    if (now - this.checkedAt >= 1000) {
      this.checkedAt = now;
      try {
        this.load();
      } catch (err) {
        this.onError(err as Error);
      }
    }
    return this.tokens.get(tokenDigest(token));
  }

  private load(): void {
    const stamps = this.files
      .map((file) => {
        try {
          const s = statSync(file);
          return `${s.mtimeMs}:${s.size}:${s.ino}`;
        } catch (err) {
          throw new ConfigError('auth.tokenFiles', `cannot read ${file}: ${(err as Error).message}`);
        }
      })
      .join('|');
    if (stamps === this.stamps) return;
    const next = new Map<string, Principal>();
    for (const file of this.files) {
      for (const [digest, principal] of parseTokenFile(file, readFileSync(file, 'utf8'))) {
        if (next.has(digest)) throw new ConfigError('auth.tokenFiles', `a token of ${file} is also in another file`);
        next.set(digest, principal);
      }
    }
    this.tokens = next;
    this.stamps = stamps;
  }
}
