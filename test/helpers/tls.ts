// Certificates for TLS tests, made by openssl in a temp directory that goes
// away with the test: CAs, server certificates for 127.0.0.1/localhost signed
// by a CA, client certificates for mutual TLS. Never committed.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';

export interface CertFiles {
  cert: string;
  key: string;
  /** SHA-256 fingerprint, as getPeerCertificate().fingerprint256 shows it. */
  fingerprint: string;
}

export interface TestPki {
  dir: string;
  /** A CA certificate and key. */
  ca(name: string): CertFiles;
  /** A certificate signed by a CA, for a server (SAN 127.0.0.1, ::1, localhost) or a client. */
  issue(ca: CertFiles, name: string, use: 'server' | 'client', into?: { cert: string; key: string }): CertFiles;
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function fingerprintOf(cert: string): string {
  return new X509Certificate(readFileSync(cert)).fingerprint256;
}

export function createPki(t: { teardown(fn: () => unknown): void }): TestPki {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-pki-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let serial = 1;
  return {
    dir,
    ca(name) {
      const cert = path.join(dir, `${name}.crt`);
      const key = path.join(dir, `${name}.key`);
      openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', key, '-out', cert]);
      return { cert, key, fingerprint: fingerprintOf(cert) };
    },
    issue(ca, name, use, into) {
      const cert = into?.cert ?? path.join(dir, `${name}.crt`);
      const key = into?.key ?? path.join(dir, `${name}.key`);
      // Written next to the target and renamed over it: a rotation the way a Secret volume swaps its files.
      const tmpKey = path.join(dir, `${name}.${serial}.key.tmp`);
      const tmpCert = path.join(dir, `${name}.${serial}.crt.tmp`);
      const csr = path.join(dir, `${name}.${serial}.csr`);
      const ext = path.join(dir, `${name}.${serial}.ext`);
      writeFileSync(ext, use === 'server' ? 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n' : 'extendedKeyUsage=clientAuth\n');
      openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`, '-keyout', tmpKey, '-out', csr]);
      openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', String(serial++), '-days', '2', '-extfile', ext, '-out', tmpCert]);
      execFileSync('mv', ['-f', tmpKey, key]);
      execFileSync('mv', ['-f', tmpCert, cert]);
      return { cert, key, fingerprint: fingerprintOf(cert) };
    },
  };
}
