// A fake NVML (test/fixtures/nvml/fake-nvml.c) built for a test: a shared
// library the agent dlopens like libnvidia-ml.so.1, answering from a state
// file the test rewrites whenever it wants NVML to say something else.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { projectRoot } from './helm.js';
import { compileWorkload } from './workload.js';

export interface FakeGpu {
  uuid: string;
  name: string;
  fields?: Record<string, number>;
}
export interface FakeState {
  init?: number;
  driver?: string;
  gpus: FakeGpu[];
  processes?: Array<{ gpu: number; pid: number; bytes: number; sm: number; mem: number }>;
  xids?: Array<{ gpu: number; xid: number; total: number }>;
}

function stateText(state: FakeState): string {
  return [
    ...(state.init !== undefined ? [`init ${state.init}`] : []),
    `driver ${state.driver ?? '550.54.15'}`,
    ...state.gpus.map((g, i) => `device ${i} uuid=${g.uuid} name=${g.name} ${Object.entries(g.fields ?? {}).map(([k, v]) => `${k}=${v}`).join(' ')}`),
    ...(state.processes ?? []).map((p) => `process ${p.gpu} ${p.pid} ${p.bytes} ${p.sm} ${p.mem}`),
    ...(state.xids ?? []).map((x) => `xid ${x.gpu} ${x.xid} ${x.total}`),
  ].join('\n') + '\n';
}

export interface FakeNvml {
  library: string;
  write(state: FakeState): void;
}

/** Builds the library; the agent finds its state through FAKE_NVML_STATE, set in this process's environment (agents inherit it). */
export async function fakeNvml(t: Test): Promise<FakeNvml> {
  const source = readFileSync(path.join(projectRoot, 'test/fixtures/nvml/fake-nvml.c'), 'utf8');
  const library = await compileWorkload(t, 'libnvidia-ml.so.1', source, ['-shared', '-fPIC']);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-nvml-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const stateFile = path.join(dir, 'state');
  const write = (state: FakeState) => writeFileSync(stateFile, stateText(state));
  process.env.FAKE_NVML_STATE = stateFile;
  return { library, write };
}
