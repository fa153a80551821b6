// TLS material of the HTTP server and the gRPC API, re-read when it changes
// on disk (cert-manager renews a Secret by swapping the mounted files): a
// file-system watch, which misses some atomic renames, and a periodic
// check of the contents. A half-written pair (key and certificate that do
// not match) is skipped until both are new.
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import { readFileSync } from 'node:fs';
import { experimental, ServerCredentials } from '@grpc/grpc-js';
import type { AgentConfig } from '../config.js';
import { ConfigError } from '../config.js';
import type { Logger } from '../log.js';
import { watchFiles } from '../file-watch.js';

type TlsConfig = AgentConfig['tls'];

export function tlsEnabled(tls: TlsConfig): boolean {
  if (!tls.certFile !== !tls.keyFile) throw new ConfigError(tls.certFile ? 'tls.keyFile' : 'tls.certFile', 'tls.certFile and tls.keyFile go together');
  if (tls.clientCaFile && !tls.certFile) throw new ConfigError('tls.clientCaFile', 'mutual TLS needs tls.certFile and tls.keyFile');
  return tls.certFile !== '';
}

/** Options of a node TLS server: modern protocols only, a client certificate required when a client CA is set. */
export function tlsOptions(tls: TlsConfig): SecureContextOptions & { requestCert: boolean; rejectUnauthorized: boolean } {
  const read = (key: keyof TlsConfig, file: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new ConfigError(`tls.${key}`, `cannot read ${file}: ${(err as Error).message}`);
    }
  };
  const options = {
    cert: read('certFile', tls.certFile),
    key: read('keyFile', tls.keyFile),
    ...(tls.clientCaFile ? { ca: read('clientCaFile', tls.clientCaFile) } : {}),
    minVersion: 'TLSv1.2' as const,
    requestCert: tls.clientCaFile !== '',
    rejectUnauthorized: tls.clientCaFile !== '',
  };
  try {
    // Throws for a key that is not the certificate's, or for bad PEM.
    createSecureContext(options);
  } catch (err) {
    throw new ConfigError('tls.certFile', `${tls.certFile} with ${tls.keyFile}: ${(err as Error).message}`);
  }
  return options;
}

/** Calls apply() with new options whenever the files' contents change; stop() ends the watching. */
export function watchTls(tls: TlsConfig, log: Logger, apply: (options: SecureContextOptions) => void): () => void {
  const files = [tls.certFile, tls.keyFile, tls.clientCaFile].filter(Boolean);
  const contents = (): string => files.map((f) => readFileSync(f, 'latin1')).join('\0');
  let last = contents();
  const check = (): void => {
    let now: string;
    try {
      now = contents();
    } catch {
      return; // between the removal and the creation of a file: the next check sees it
    }
    if (now === last) return;
    try {
      const options = tlsOptions(tls);
      apply(options);
      last = now;
      log.info({ certFile: tls.certFile }, 'TLS certificate reloaded');
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'TLS files changed but do not make a valid pair yet; serving the previous certificate');
    }
  };
  return watchFiles(files, tls.reloadIntervalSeconds * 1000, check);
}

/** gRPC credentials that follow the files (grpc-js re-reads them and swaps its secure context), or plaintext. */
export function grpcCredentials(tls: TlsConfig): ServerCredentials {
  if (!tlsEnabled(tls)) return ServerCredentials.createInsecure();
  tlsOptions(tls); // the same errors at start as the HTTP server's
  const provider = new experimental.FileWatcherCertificateProvider({
    certificateFile: tls.certFile,
    privateKeyFile: tls.keyFile,
    ...(tls.clientCaFile ? { caCertificateFile: tls.clientCaFile } : {}),
    refreshIntervalMs: tls.reloadIntervalSeconds * 1000,
  });
  // grpc-js 1.14 hands the first argument to the credentials as the identity provider and the second as the CA
  // provider, whatever their declared names: one provider holds both, so each call is right either way.
  return experimental.createCertificateProviderServerCredentials(provider, tls.clientCaFile ? provider : null, tls.clientCaFile !== '');
}
